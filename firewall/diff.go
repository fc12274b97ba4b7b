package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// change is what reconciling one family needs: an iptables-restore
// --noflush script (empty when the rules are right), ipset scripts to run
// before and after it, and the drift that made them necessary.
type change struct {
	restore    []byte   // iptables-restore --noflush input
	setsBefore []byte   // ipset restore input: create/fill/swap wanted sets
	setsAfter  []string // sets to destroy once no rule references them
	drift      []string
}

func (c change) empty() bool {
	return len(c.restore) == 0 && len(c.setsBefore) == 0 && len(c.setsAfter) == 0
}

// haveSets is the observed ipsets zguard may own: name -> entries (entries
// are only read for sets zguard wants).
type haveSets map[string][]netip.Prefix

// diff compares the wanted rules of one family with what is installed and
// returns the change that makes them equal. Chains are replaced whole
// inside one iptables-restore transaction (declaring a chain flushes it),
// so a packet sees either the old rules or the new ones, never a mix.
func diff(want ruleset, have tables, sets haveSets, n names) change {
	var c change
	type tableScript struct{ decl, rules, jumps, stale []string }
	scripts := map[string]*tableScript{}
	get := func(t string) *tableScript {
		if scripts[t] == nil {
			scripts[t] = &tableScript{}
		}
		return scripts[t]
	}

	keys := slices.Collect(func(yield func(string) bool) {
		for _, k := range n.chainKeys() {
			if _, ok := want.chains[k]; ok && !yield(k) {
				return
			}
		}
	})
	for _, key := range keys {
		rules := want.chains[key]
		tbl, ch, _ := strings.Cut(key, "/")
		got, ok := have.chain(key)
		switch {
		case !ok:
			c.drift = append(c.drift, fmt.Sprintf("%s: chain %s missing", want.family, key))
		case !sameRules(got, rules):
			c.drift = append(c.drift, fmt.Sprintf("%s: chain %s differs (%d rules, want %d)", want.family, key, len(got), len(rules)))
		default:
			continue
		}
		s := get(tbl)
		s.decl = append(s.decl, ":"+ch+" - [0:0]")
		for _, r := range rules {
			s.rules = append(s.rules, "-A "+ch+" "+r)
		}
	}

	for _, j := range want.jumps {
		s := get(j.table)
		t := have[j.table]
		var parent []rule
		if t != nil {
			parent = t.chains[j.parent]
		}
		if (t == nil || !t.has(j.parent)) && !builtinChain(j.parent) {
			// DOCKER-USER is missing when Docker has not started yet:
			// create it the way dockerd does. (Built-in chains appear
			// with their table.)
			s.decl = append(s.decl, ":"+j.parent+" - [0:0]")
		}
		count := 0
		for _, r := range parent {
			if r.spec == j.rule {
				count++
			}
		}
		first := ""
		if len(parent) > 0 {
			first = parent[0].spec
		}
		insert := true
		switch {
		case first == j.rule && count == 1:
			continue
		case slices.Contains(j.alsoOK, first) && count == 0:
			continue
		case slices.Contains(j.alsoOK, first):
			// Docker's jump is first again; zguard's spare one is
			// redundant, so it goes.
			c.drift = append(c.drift, fmt.Sprintf("%s: redundant jump %q in %s/%s", want.family, j.rule, j.table, j.parent))
			insert = false
		default:
			c.drift = append(c.drift, fmt.Sprintf("%s: jump %q not first in %s/%s", want.family, j.rule, j.table, j.parent))
		}
		for range count {
			s.jumps = append(s.jumps, "-D "+j.parent+" "+j.rule)
		}
		if insert {
			s.jumps = append(s.jumps, "-I "+j.parent+" 1 "+j.rule)
		}
	}

	// Chains zguard owns but no longer wants (leak guard no longer needed,
	// IPv6 switched off) are unhooked and deleted.
	for _, key := range n.chainKeys() {
		if _, wanted := want.chains[key]; wanted {
			continue
		}
		if _, ok := have.chain(key); !ok {
			continue
		}
		tbl, ch, _ := strings.Cut(key, "/")
		c.drift = append(c.drift, fmt.Sprintf("%s: stale chain %s", want.family, key))
		s := get(tbl)
		s.stale = append(s.stale, unhook(have[tbl], ch)...)
		s.stale = append(s.stale, "-F "+ch, "-X "+ch)
	}

	var b strings.Builder
	for _, tbl := range []string{"raw", "filter"} {
		s := scripts[tbl]
		if s == nil || len(s.decl)+len(s.rules)+len(s.jumps)+len(s.stale) == 0 {
			continue
		}
		b.WriteString("*" + tbl + "\n")
		for _, part := range [][]string{s.decl, s.rules, s.jumps, s.stale} {
			for _, l := range part {
				b.WriteString(l + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	if b.Len() > 0 {
		c.restore = []byte(b.String())
	}

	c.setsBefore, c.setsAfter = diffSets(want, sets, n, &c.drift)
	return c
}

func builtinChain(ch string) bool {
	switch ch {
	case "INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING":
		return true
	}
	return false
}

// unhook returns the -D commands that remove every rule of t jumping to ch.
func unhook(t *table, ch string) []string {
	var out []string
	for _, parent := range t.order {
		for _, r := range t.chains[parent] {
			if target(r.spec) == ch {
				out = append(out, "-D "+parent+" "+r.spec)
			}
		}
	}
	return out
}

func sameRules(got []rule, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].spec != want[i] {
			return false
		}
	}
	return true
}

// diffSets returns the ipset restore script for wanted sets whose entries
// differ (filled into a temporary set and swapped in atomically), and the
// owned sets to destroy.
func diffSets(want ruleset, have haveSets, n names, drift *[]string) ([]byte, []string) {
	var b strings.Builder
	names := make([]string, 0, len(want.sets))
	for name := range want.sets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ws := want.sets[name]
		got, exists := have[name]
		if exists && samePrefixes(got, ws.entries) {
			continue
		}
		if exists {
			*drift = append(*drift, fmt.Sprintf("%s: set %s differs (%d entries, want %d)", want.family, name, len(got), len(ws.entries)))
		} else {
			*drift = append(*drift, fmt.Sprintf("%s: set %s missing", want.family, name))
		}
		maxelem := max(65536, 2*len(ws.entries))
		create := func(set string) {
			fmt.Fprintf(&b, "create %s hash:net family %s hashsize 1024 maxelem %d -exist\n", set, ws.family.ipsetFamily(), maxelem)
		}
		fill := name
		if exists {
			fill = name + n.tmpSuffix
			create(fill)
			fmt.Fprintf(&b, "flush %s\n", fill)
		} else {
			create(name)
		}
		for _, e := range ws.entries {
			fmt.Fprintf(&b, "add %s %s -exist\n", fill, e)
		}
		if exists {
			fmt.Fprintf(&b, "swap %s %s\ndestroy %s\n", fill, name, fill)
		}
	}
	// Sets of this family that zguard owns but no longer wants.
	var destroy []string
	for _, name := range []string{n.allowSet(want.family), n.banSet(want.family)} {
		for _, s := range []string{name, name + n.tmpSuffix} {
			if _, wanted := want.sets[s]; wanted {
				continue
			}
			if _, ok := have[s]; ok {
				if s == name {
					*drift = append(*drift, fmt.Sprintf("%s: stale set %s", want.family, s))
				}
				destroy = append(destroy, s)
			}
		}
	}
	var script []byte
	if b.Len() > 0 {
		script = []byte(b.String())
	}
	return script, destroy
}

func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	x := slices.Clone(a)
	y := slices.Clone(b)
	slices.SortFunc(x, comparePrefix)
	slices.SortFunc(y, comparePrefix)
	return slices.Equal(x, y)
}
