package gateway

import (
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// recordFailure adds a failed login at now to an address's history, drops
// entries older than window, and reports whether the address has now
// reached limit failures and must be banned. limit <= 0 disables lockout.
func recordFailure(history []time.Time, now time.Time, window time.Duration, limit int) ([]time.Time, bool) {
	kept := history[:0]
	for _, t := range history {
		if now.Sub(t) < window {
			kept = append(kept, t)
		}
	}
	kept = append(kept, now)
	if limit <= 0 {
		return nil, false
	}
	return kept, len(kept) >= limit
}

// exempt reports whether addr lies in one of the lockout-exempt prefixes.
func exempt(prefixes []netip.Prefix, addr netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// originVerdict is the CSRF decision for one request.
type originVerdict struct {
	ok     bool
	reason string
}

// checkOrigin decides whether a state-changing request (or a WebSocket
// handshake) may proceed. Browsers attach cached Basic credentials to
// cross-site requests, so the gateway refuses those itself: a request must
// come from the gateway's own origin (self, e.g. "https://gpu.example:8080")
// or one of allowed. Requests with neither Origin nor Sec-Fetch-Site come
// from non-browser clients (curl, API scripts), which CSRF cannot forge.
func checkOrigin(origin, fetchSite, self string, allowed []string) originVerdict {
	if origin == "" {
		switch fetchSite {
		case "", "same-origin", "none":
			return originVerdict{ok: true}
		}
		return originVerdict{reason: "cross-site request (Sec-Fetch-Site: " + fetchSite + ") without Origin"}
	}
	if origin == "null" {
		return originVerdict{reason: "opaque Origin \"null\""}
	}
	norm := normOrigin(origin)
	if norm == "" {
		return originVerdict{reason: "malformed Origin"}
	}
	if norm == normOrigin(self) {
		return originVerdict{ok: true}
	}
	for _, a := range allowed {
		if norm == normOrigin(a) {
			return originVerdict{ok: true}
		}
	}
	return originVerdict{reason: "foreign Origin " + origin}
}

// normOrigin lowercases scheme and host and drops default ports, so
// "HTTPS://Host:443" equals "https://host".
func normOrigin(o string) string {
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return ""
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return scheme + "://" + host + ":" + port
	}
	return scheme + "://" + host
}

// stateChanging reports whether a request needs the Origin check: every
// method that is not safe, and the /ws handshake (a WebSocket is not bound
// by the same-origin policy).
func stateChanging(method, route string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS":
		return route == "/ws"
	}
	return true
}

// retryAfter turns a wait into whole seconds for the Retry-After header
// (at least 1).
func retryAfter(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// redactQuery drops the values of query parameters that may hold secrets,
// for the audit log.
func redactQuery(q string) string {
	if q == "" {
		return ""
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return "(unparsable)"
	}
	for k := range vals {
		lk := strings.ToLower(k)
		for _, s := range []string{"token", "key", "pass", "auth", "secret", "session"} {
			if strings.Contains(lk, s) {
				vals[k] = []string{"REDACTED"}
				break
			}
		}
	}
	return vals.Encode()
}
