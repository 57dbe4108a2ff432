// What went wrong with a request, in words: our server explains in JSON.
export async function describe(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}
