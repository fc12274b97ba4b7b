package firewall

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// fakeNet is an in-memory stand-in for the netfilter tools: per family a
// map "table/chain" -> rules, plus ipsets. It understands exactly the
// commands zguard issues, applies each restore atomically (all or
// nothing), and counts invocations.
type fakeNet struct {
	mu      sync.Mutex
	fams    map[string]*fakeFamily // "iptables", "ip6tables"
	sets    map[string][]string
	noIPv6  bool
	nftList string
	calls   []string
}

type fakeFamily struct {
	chains   map[string][]string // "table/chain" -> rule specs
	order    []string            // chain creation order
	policies map[string]string   // "table/chain" -> policy for built-ins
}

var builtins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

func newFakeNet() *fakeNet {
	f := &fakeNet{fams: map[string]*fakeFamily{}, sets: map[string][]string{}}
	for _, tool := range []string{"iptables", "ip6tables"} {
		f.fams[tool] = &fakeFamily{chains: map[string][]string{}, policies: map[string]string{}}
	}
	return f
}

// withDocker adds what dockerd 20.10 creates: DOCKER-USER with a RETURN,
// jumped to first from FORWARD.
func (f *fakeNet) withDocker() *fakeNet {
	fam := f.fams["iptables"]
	fam.ensureTable("filter")
	fam.create("filter/DOCKER-USER")
	fam.chains["filter/DOCKER-USER"] = []string{"-j RETURN"}
	fam.chains["filter/FORWARD"] = []string{"-j DOCKER-USER", "-o docker0 -j DOCKER"}
	fam.policies["filter/FORWARD"] = "DROP"
	return f
}

func (ff *fakeFamily) ensureTable(t string) {
	for _, b := range builtins[t] {
		k := t + "/" + b
		if _, ok := ff.chains[k]; !ok {
			ff.create(k)
			ff.policies[k] = "ACCEPT"
		}
	}
}

func (ff *fakeFamily) create(key string) {
	if _, ok := ff.chains[key]; !ok {
		ff.chains[key] = []string{}
		ff.order = append(ff.order, key)
	}
}

func (ff *fakeFamily) clone() *fakeFamily {
	c := &fakeFamily{chains: map[string][]string{}, order: slices.Clone(ff.order), policies: maps.Clone(ff.policies)}
	for k, v := range ff.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

func (ff *fakeFamily) save() string {
	var b strings.Builder
	for _, t := range []string{"raw", "filter"} {
		var keys []string
		for _, k := range ff.order {
			if strings.HasPrefix(k, t+"/") {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", t)
		for _, k := range keys {
			pol := ff.policies[k]
			if pol == "" {
				pol = "-"
			}
			fmt.Fprintf(&b, ":%s %s [0:0]\n", strings.TrimPrefix(k, t+"/"), pol)
		}
		for _, k := range keys {
			for _, r := range ff.chains[k] {
				fmt.Fprintf(&b, "[3:180] -A %s %s\n", strings.TrimPrefix(k, t+"/"), r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// restore applies an iptables-restore --noflush script to a copy and
// returns it, or the first error.
func (ff *fakeFamily) restore(script string) (*fakeFamily, error) {
	c := ff.clone()
	tbl := ""
	for l := range strings.Lines(script) {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l == "COMMIT":
		case strings.HasPrefix(l, "*"):
			tbl = l[1:]
			c.ensureTable(tbl)
		case strings.HasPrefix(l, ":"):
			name := strings.Fields(l[1:])[0]
			key := tbl + "/" + name
			c.create(key)
			c.chains[key] = []string{} // declaring flushes, even with --noflush
		default:
			op, rest, _ := strings.Cut(l, " ")
			ch, spec, _ := strings.Cut(rest, " ")
			key := tbl + "/" + ch
			rules, ok := c.chains[key]
			if !ok {
				return nil, fmt.Errorf("chain %s does not exist", key)
			}
			if t := target(spec); op != "-D" && t != "" && t != "DROP" && t != "RETURN" && t != "ACCEPT" {
				if _, ok := c.chains[tbl+"/"+t]; !ok {
					return nil, fmt.Errorf("jump to missing chain %s", t)
				}
			}
			switch op {
			case "-A":
				c.chains[key] = append(rules, spec)
			case "-I":
				pos, r, _ := strings.Cut(spec, " ")
				if pos != "1" {
					return nil, fmt.Errorf("fake supports -I at 1 only")
				}
				c.chains[key] = append([]string{r}, rules...)
			case "-D":
				i := slices.Index(rules, spec)
				if i < 0 {
					return nil, fmt.Errorf("-D %s %s: no such rule", ch, spec)
				}
				c.chains[key] = slices.Delete(rules, i, i+1)
			case "-F":
				c.chains[key] = []string{}
			case "-X":
				if len(rules) > 0 {
					return nil, fmt.Errorf("-X %s: chain not empty", ch)
				}
				for k, rs := range c.chains {
					for _, r := range rs {
						if strings.HasPrefix(k, tbl+"/") && target(r) == ch {
							return nil, fmt.Errorf("-X %s: chain referenced", ch)
						}
					}
				}
				delete(c.chains, key)
				c.order = slices.DeleteFunc(c.order, func(k string) bool { return k == key })
			default:
				return nil, fmt.Errorf("fake restore: unsupported %q", l)
			}
		}
	}
	return c, nil
}

func (f *fakeNet) run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, strings.TrimSpace(name+" "+strings.Join(args, " ")))
	tool := strings.TrimSuffix(strings.TrimSuffix(name, "-save"), "-restore")
	if tool == "ip6tables" && f.noIPv6 {
		return nil, fmt.Errorf("%s: ip6tables not available", name)
	}
	switch {
	case name == "iptables" && len(args) == 1 && args[0] == "--version":
		return []byte("iptables v1.8.9 (nf_tables)\n"), nil
	case name == "iptables-legacy-save":
		return nil, nil
	case name == "nft" && len(args) == 2 && args[0] == "list":
		return []byte(f.nftList), nil
	case name == "nft" && len(args) == 4 && args[0] == "delete":
		tool := map[string]string{"ip": "iptables", "ip6": "ip6tables"}[args[2]]
		ff := f.fams[tool]
		for k := range ff.chains {
			if strings.HasPrefix(k, args[3]+"/") {
				delete(ff.chains, k)
				delete(ff.policies, k)
			}
		}
		ff.order = slices.DeleteFunc(ff.order, func(k string) bool { return strings.HasPrefix(k, args[3]+"/") })
		return nil, nil
	case strings.HasSuffix(name, "-save") && f.fams[tool] != nil:
		return []byte(f.fams[tool].save()), nil
	case strings.HasSuffix(name, "-restore") && f.fams[tool] != nil:
		c, err := f.fams[tool].restore(string(stdin))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		f.fams[tool] = c
		return nil, nil
	case name == "ipset":
		return f.ipset(stdin, args)
	}
	return nil, fmt.Errorf("fake: unsupported command %s %v", name, args)
}

func (f *fakeNet) ipset(stdin []byte, args []string) ([]byte, error) {
	switch args[0] {
	case "list":
		if len(args) == 3 && args[1] == "-t" {
			if _, ok := f.sets[args[2]]; !ok {
				return nil, fmt.Errorf("ipset list: no set %s", args[2])
			}
			return []byte(fmt.Sprintf("Name: %s\nType: hash:net\nNumber of entries: %d\n", args[2], len(f.sets[args[2]]))), nil
		}
		names := slices.Sorted(maps.Keys(f.sets))
		if len(names) == 0 {
			return nil, nil
		}
		return []byte(strings.Join(names, "\n") + "\n"), nil
	case "save":
		var b strings.Builder
		fmt.Fprintf(&b, "create %s hash:net family inet hashsize 1024 maxelem 65536\n", args[1])
		for _, e := range f.sets[args[1]] {
			// ipset prints host entries without their length.
			p := netip.MustParsePrefix(e)
			if p.IsSingleIP() {
				e = p.Addr().String()
			}
			fmt.Fprintf(&b, "add %s %s\n", args[1], e)
		}
		return []byte(b.String()), nil
	case "destroy":
		if _, ok := f.sets[args[1]]; !ok {
			return nil, fmt.Errorf("ipset destroy %s: no such set", args[1])
		}
		delete(f.sets, args[1])
		return nil, nil
	case "restore":
		sets := maps.Clone(f.sets)
		for l := range strings.Lines(string(stdin)) {
			w := strings.Fields(l)
			if len(w) == 0 {
				continue
			}
			switch w[0] {
			case "create":
				if _, ok := sets[w[1]]; !ok {
					sets[w[1]] = nil
				}
			case "flush":
				sets[w[1]] = nil
			case "add":
				sets[w[1]] = append(slices.Clone(sets[w[1]]), w[2])
			case "swap":
				sets[w[1]], sets[w[2]] = sets[w[2]], sets[w[1]]
			case "destroy":
				delete(sets, w[1])
			default:
				return nil, fmt.Errorf("fake ipset restore: unsupported %q", l)
			}
		}
		f.sets = sets
		return nil, nil
	}
	return nil, fmt.Errorf("fake ipset: unsupported %v", args)
}

// chain returns a copy of one chain's rules.
func (f *fakeNet) chain(tool, key string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.fams[tool].chains[key])
}

// edit changes the fake's state the way another tool would.
func (f *fakeNet) edit(tool string, fn func(ff *fakeFamily)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.fams[tool])
}

func (f *fakeNet) snapshot() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fams["iptables"].save() + f.fams["ip6tables"].save() + fmt.Sprint(f.sets)
}

// fakeConntrack records what revocation would cut.
type fakeConntrack struct {
	mu    sync.Mutex
	flows []flow
	cuts  []flow
	local map[netip.Addr]bool
}

func (c *fakeConntrack) cut(match func(flow) bool) (uint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var kept []flow
	n := uint(0)
	for _, f := range c.flows {
		if match(f) {
			c.cuts = append(c.cuts, f)
			n++
		} else {
			kept = append(kept, f)
		}
	}
	c.flows = kept
	return n, nil
}

func (c *fakeConntrack) localAddrs() (map[netip.Addr]bool, error) { return c.local, nil }
