// Reads the pixel clock that the classroom agent stamps into every video frame, so a
// page can measure glass-to-glass latency: draw the <video> into a canvas, read the
// clock, subtract it from Date.now().
//
// Format (the same as classroom_agent/pixelclock.py; change both together): 40 square
// blocks along the top-left edge, block side b = min(height / 45, width / 40); block i
// spans x in [i*b, (i+1)*b), y in [0, b). White = 1, black = 0, most significant bit
// first: 32 bits of wall-clock milliseconds modulo 2**32, then CRC-8 (poly 0x07, init 0)
// of those four big-endian bytes XOR 0x55. A failed check means "no clock here".

const BLOCKS = 40;
const THRESHOLD = (235 + 16) / 2;

function crc8(bytes) {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) {
      crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    }
  }
  return crc;
}

/**
 * Read the clock from an ImageData (RGBA, e.g. ctx.getImageData of a canvas the video
 * was drawn into at any size with the video's aspect ratio).
 * @param {{width: number, height: number, data: Uint8ClampedArray}} imageData
 * @returns {number|null} milliseconds modulo 2**32, or null if there is no valid clock.
 */
export function readPixelClock(imageData) {
  const { width, height, data } = imageData;
  const b = Math.min(height / 45, width / BLOCKS);
  if (b < 2) return null;
  const y0 = Math.floor(b * 0.25);
  const y1 = Math.max(y0 + 1, Math.round(b * 0.75));
  const bits = [];
  for (let i = 0; i < BLOCKS; i++) {
    const x0 = Math.floor((i + 0.25) * b);
    const x1 = Math.max(x0 + 1, Math.round((i + 0.75) * b));
    let sum = 0;
    let count = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const o = (y * width + x) * 4;
        // BT.601 limited-range luma, as the agent's reader computes it.
        sum += 16 + (65.738 * data[o] + 129.057 * data[o + 1] + 25.064 * data[o + 2]) / 256;
        count++;
      }
    }
    bits.push(sum / count > THRESHOLD ? 1 : 0);
  }
  let value = 0;
  for (let i = 0; i < 32; i++) value = value * 2 + bits[i];
  let check = 0;
  for (let i = 32; i < BLOCKS; i++) check = check * 2 + bits[i];
  const bytes = [(value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
  return (crc8(bytes) ^ 0x55) === check ? value : null;
}

/**
 * Milliseconds from a clock value to now, across the 2**32 wrap.
 * @param {number} clock
 * @param {number} [nowMs]
 */
export function clockAgeMs(clock, nowMs = Date.now()) {
  const diff = (((nowMs % 2 ** 32) - clock) % 2 ** 32 + 2 ** 32) % 2 ** 32;
  return diff >= 2 ** 31 ? diff - 2 ** 32 : diff;
}
