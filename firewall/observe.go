package firewall

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// rule is one observed rule: its spec as iptables-save prints it after
// "-A CHAIN ", and its counters.
type rule struct {
	spec           string
	packets, bytes uint64
}

// table is one observed table: chains in file order with their rules, and
// the policies of built-in chains ("-" for user chains).
type table struct {
	order    []string
	chains   map[string][]rule
	policies map[string]string
}

func (t *table) has(chain string) bool {
	_, ok := t.chains[chain]
	return ok
}

// tables is the observed state of one family, keyed by table name.
type tables map[string]*table

func (ts tables) chain(key string) ([]rule, bool) {
	tbl, ch, _ := strings.Cut(key, "/")
	t, ok := ts[tbl]
	if !ok {
		return nil, false
	}
	r, ok := t.chains[ch]
	return r, ok
}

// parseSave parses `iptables-save -c` output (counters optional).
func parseSave(data []byte) (tables, error) {
	ts := tables{}
	var cur *table
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &table{chains: map[string][]rule{}, policies: map[string]string{}}
			ts[line[1:]] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("parsing iptables-save line %d: %q outside a table", n, line)
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("parsing iptables-save line %d: bad chain %q", n, line)
			}
			cur.order = append(cur.order, f[0])
			cur.chains[f[0]] = nil
			cur.policies[f[0]] = f[1]
		default:
			var r rule
			if strings.HasPrefix(line, "[") {
				end := strings.IndexByte(line, ']')
				if end < 0 {
					return nil, fmt.Errorf("parsing iptables-save line %d: bad counters %q", n, line)
				}
				p, b, _ := strings.Cut(line[1:end], ":")
				r.packets, _ = strconv.ParseUint(p, 10, 64)
				r.bytes, _ = strconv.ParseUint(b, 10, 64)
				line = strings.TrimSpace(line[end+1:])
			}
			rest, ok := strings.CutPrefix(line, "-A ")
			if !ok {
				return nil, fmt.Errorf("parsing iptables-save line %d: unexpected %q", n, line)
			}
			ch, sp, _ := strings.Cut(rest, " ")
			if _, known := cur.chains[ch]; !known {
				cur.order = append(cur.order, ch)
			}
			r.spec = sp
			cur.chains[ch] = append(cur.chains[ch], r)
		}
	}
	return ts, sc.Err()
}

// target returns the -j target of a rule spec ("" when none).
func target(spec string) string {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// parseSetSave parses `ipset save NAME` output into the set's entries.
// hash:net prints host entries without a length, so "192.0.2.1" is a /32.
func parseSetSave(data []byte) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "add" {
			continue
		}
		e := f[2]
		if strings.Contains(e, "/") {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("parsing ipset entry %q: %w", e, err)
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("parsing ipset entry %q: %w", e, err)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// parseSetSize reads "Number of entries: N" from `ipset list -t` output.
func parseSetSize(data []byte) (int, error) {
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Number of entries:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("parsing ipset header: no entry count in %q", data)
}

// digest identifies a list of entries (sorted), to remember what a set held.
func digest(ps []netip.Prefix) string {
	h := sha256.New()
	for _, p := range ps {
		h.Write([]byte(p.String()))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// counts sums drop counters of zguard's rules by their comment.
func counts(ts tables, n names) map[string]uint64 {
	out := map[string]uint64{}
	for _, key := range n.chainKeys() {
		rules, _ := ts.chain(key)
		for _, r := range rules {
			if target(r.spec) != "DROP" {
				continue
			}
			name := "deny"
			if i := strings.Index(r.spec, `--comment "zguard:`); i >= 0 {
				rest := r.spec[i+len(`--comment "zguard:`):]
				if j := strings.IndexByte(rest, '"'); j >= 0 {
					name, _, _ = strings.Cut(rest[:j], ":") // "ban:<expiry>" counts as "ban"
				}
			}
			out[name] += r.packets
		}
	}
	return out
}

// parseBans reads the bans in a GATE chain's rules: "-s ADDR/32 -m comment
// --comment "zguard:ban:UNIX" -j DROP".
func parseBans(rules []rule) map[netip.Addr]time.Time {
	out := map[netip.Addr]time.Time{}
	for _, r := range rules {
		f := strings.Fields(r.spec)
		if len(f) < 2 || f[0] != "-s" {
			continue
		}
		i := strings.Index(r.spec, `--comment "zguard:ban:`)
		if i < 0 {
			continue
		}
		rest := r.spec[i+len(`--comment "zguard:ban:`):]
		j := strings.IndexByte(rest, '"')
		if j < 0 {
			continue
		}
		unix, err := strconv.ParseInt(rest[:j], 10, 64)
		p, perr := netip.ParsePrefix(f[1])
		if err != nil || perr != nil || !p.IsSingleIP() {
			continue
		}
		out[p.Addr()] = time.Unix(unix, 0)
	}
	return out
}
