package gateway

import (
	"errors"
	"net/url"
	"strings"
)

// canonical is a request path after normalisation: what the policy looks
// at and what ComfyUI receives, so the two can never disagree.
type canonical struct {
	// Raw is the escaped path sent upstream: dot segments resolved, empty
	// segments dropped, percent-escapes of unreserved characters decoded
	// and every other escape kept (uppercase), notably %2F inside a
	// segment, which ComfyUI's /userdata routes rely on.
	Raw string
	// Decoded is Raw fully unescaped (%2F becomes '/'), used for matching
	// block_paths, so an escaped slash cannot slip past a pattern.
	Decoded string
	// Route is Decoded without the "/api" prefix: ComfyUI serves every
	// route both at /x and at /api/x, and the policy treats them alike.
	Route string
}

var errBadPath = errors.New("malformed request path")

// normalizePath canonicalises an escaped request path. It refuses paths that
// are not absolute, malformed escapes and NUL bytes.
func normalizePath(escaped string) (canonical, error) {
	if !strings.HasPrefix(escaped, "/") {
		return canonical{}, errBadPath
	}
	parts := strings.Split(escaped[1:], "/")
	decoded := make([]string, len(parts))
	for i, p := range parts {
		s, err := decodeSegment(p)
		if err != nil {
			return canonical{}, err
		}
		decoded[i] = s
	}
	segs := resolveDots(decoded)
	raw := "/" + strings.Join(segs, "/")
	last := parts[len(parts)-1]
	if len(segs) > 0 && (last == "" || last == "." || last == "..") {
		raw += "/"
	}
	dec, err := url.PathUnescape(raw)
	if err != nil {
		return canonical{}, errBadPath
	}
	if strings.Contains(dec, "\x00") {
		return canonical{}, errBadPath
	}
	route := dec
	if route == "/api" {
		route = "/"
	} else if strings.HasPrefix(route, "/api/") {
		route = route[len("/api"):]
	}
	return canonical{Raw: raw, Decoded: dec, Route: cleanDecoded(route)}, nil
}

// cleanDecoded collapses slashes and dot segments that only appear once
// %2F escapes are decoded ("/a%2F..%2Fb"), so Route is clean too.
func cleanDecoded(p string) string {
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p
	}
	segs := resolveDots(strings.Split(p[1:], "/"))
	out := "/" + strings.Join(segs, "/")
	if len(segs) > 0 && strings.HasSuffix(p, "/") {
		out += "/"
	}
	return out
}

// resolveDots drops empty and "." segments and lets ".." remove the one
// before it, never climbing above the root.
func resolveDots(parts []string) []string {
	var segs []string
	for _, s := range parts {
		switch s {
		case "", ".":
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		default:
			segs = append(segs, s)
		}
	}
	return segs
}

// decodeSegment decodes escapes of unreserved characters (RFC 3986:
// ALPHA, DIGIT, "-", ".", "_", "~") and uppercases the others.
func decodeSegment(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", errBadPath
		}
		v := unhex(s[i+1])<<4 | unhex(s[i+2])
		if v == 0 {
			return "", errBadPath
		}
		if isUnreserved(v) {
			b.WriteByte(v)
		} else {
			b.WriteByte('%')
			b.WriteByte(upper(s[i+1]))
			b.WriteByte(upper(s[i+2]))
		}
		i += 2
	}
	return b.String(), nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// matchGlob reports whether name matches pattern, where '*' matches any run
// of characters including '/'. Everything else matches itself.
func matchGlob(pattern, name string) bool {
	// Iterative wildcard matching with backtracking to the last '*'.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// blocked reports whether a canonical path falls under any block pattern.
// Patterns are matched against the decoded path and the /api-less route,
// and a pattern written with or without "/api" covers both spellings.
func blocked(patterns []string, c canonical) bool {
	for _, pat := range patterns {
		alt := pat
		if strings.HasPrefix(pat, "/api/") {
			alt = pat[len("/api"):]
		}
		for _, cand := range []string{c.Decoded, c.Route} {
			if matchGlob(pat, cand) || matchGlob(alt, cand) {
				return true
			}
			// "/manager/*" also covers "/manager" itself.
			if base, ok := strings.CutSuffix(alt, "/*"); ok && cand == base {
				return true
			}
		}
	}
	return false
}
