// Reconnect delays: exponential with full jitter, so that a classroom full of viewers
// that lost the server at the same moment does not come back at the same moment.

export class Backoff {
  // The first retries are quick (a media node that died is replaced at once and the
  // lesson must go on within 5 s: 0.25 s, 0.5 s, 1 s...); at most 8 s: a classroom whose
  // line comes back must be in the lesson again within 10 s. Full jitter still spreads a
  // county's reconnections.
  constructor({ baseMs = 250, maxMs = 8000, random = Math.random } = {}) {
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next attempt; grows until reset(). */
  next() {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt += 1;
    // Never below half the ceiling: a zero delay would hammer a server that is restarting.
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  reset() {
    this.attempt = 0;
  }
}
