// ICE gathering without trickle: both PeerConnections send their SDP once gathering is
// complete.

const GATHER_TIMEOUT_MS = 5000;

/** Resolves when `pc` has gathered its candidates, or after a timeout. Without STUN/TURN
 * servers gathering ends in milliseconds; the timeout only guards against a stuck
 * interface, and an SDP with the candidates gathered so far still works. */
export function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}
