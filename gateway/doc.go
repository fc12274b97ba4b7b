// Package gateway is zguard's authenticating reverse proxy: the one public
// door to ComfyUI, with Basic auth and bearer tokens, WebSocket
// pass-through, per-identity prompt limits, brute-force lockout into the
// firewall, an Origin (CSRF) guard and an audit log.
//
// Every request goes through the same steps (ServeHTTP), in this order:
//
//  1. A banned source is refused (also at accept, before any parsing).
//  2. The path is normalised once (dot segments, empty segments, escapes of
//     unreserved characters); the policy and ComfyUI see the same path,
//     and "/api/x" is treated as "/x" as ComfyUI does.
//  3. State-changing requests and the /ws handshake must come from the
//     gateway's own origin or an allowed one: browsers attach cached Basic
//     credentials to cross-site requests, so CSRF is the gateway's job.
//  4. Credentials: Basic (bcrypt; verdicts cached by a digest of user,
//     hash and password, deduplicated and bounded in parallelism, unknown
//     users checked against a hash of the same cost) or Bearer (SHA-256
//     digests compared in constant time). Failures count towards the
//     per-address lockout, which bans in the firewall and cuts the
//     address's open connections.
//  5. block_paths (ComfyUI-Manager's install routes by default) unless the
//     identity is an admin; body size; for POST /prompt the concurrency
//     and rate limits.
//  6. The request goes to ComfyUI with Host and Origin set to ComfyUI's
//     own (it refuses a loopback Host with a foreign Origin) and without
//     the credentials.
//
// Policy is pure functions (normalizePath, blocked, checkOrigin,
// recordFailure, promptLimits with the time passed in); the mechanism is
// the listeners, the upstream transports and the files.
package gateway
