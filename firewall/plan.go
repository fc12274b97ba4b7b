package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// family is an IP family; its value is the one iptables/ipset tools use in
// their names (iptables vs ip6tables, inet vs inet6).
type family int

const (
	ipv4 family = 4
	ipv6 family = 6
)

func (f family) String() string {
	if f == ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

// tool returns the iptables binary for the family ("iptables", "ip6tables").
func (f family) tool() string {
	if f == ipv6 {
		return "ip6tables"
	}
	return "iptables"
}

func (f family) ipsetFamily() string {
	if f == ipv6 {
		return "inet6"
	}
	return "inet"
}

// Comments zguard puts on its rules. They name the rule in status (per-rule
// drop counts) and let cleanup recognise the one rule zguard adds to a chain
// it does not own (the FORWARD jump to a DOCKER-USER it had to create).
const (
	cLoopback  = "zguard:loopback"
	cBlock     = "zguard:block"
	cProtect   = "zguard:protect"
	cBan       = "zguard:ban"
	cDeny      = "zguard:deny"
	cLeakGuard = "zguard:leak-guard"
)

// maxMultiport is how many ports one `-m multiport --dports` may list.
const maxMultiport = 15

// names are the chains and sets zguard owns for one chain prefix. Cleanup
// removes exactly these, so a prefix never touches another prefix's objects.
type names struct {
	prefix                     string
	input, forward, gate, raw  string
	allow4, allow6, ban4, ban6 string
	dockerUserMark             string // comment on zguard's own FORWARD -> DOCKER-USER jump
	tmpSuffix                  string
}

func namesFor(prefix string) names {
	return names{
		prefix:         prefix,
		input:          prefix + "-INPUT",
		forward:        prefix + "-FORWARD",
		gate:           prefix + "-GATE",
		raw:            prefix + "-RAW",
		allow4:         prefix + "-allow4",
		allow6:         prefix + "-allow6",
		ban4:           prefix + "-ban4",
		ban6:           prefix + "-ban6",
		dockerUserMark: "zguard:" + prefix,
		tmpSuffix:      "-t",
	}
}

// chainKeys lists every "table/chain" zguard may own, in creation order.
func (n names) chainKeys() []string {
	return []string{"filter/" + n.gate, "filter/" + n.input, "filter/" + n.forward, "raw/" + n.raw}
}

// setNames lists every ipset zguard may own, including the temporaries
// used for swaps.
func (n names) setNames() []string {
	var out []string
	for _, s := range []string{n.allow4, n.allow6, n.ban4, n.ban6} {
		out = append(out, s, s+n.tmpSuffix)
	}
	return out
}

func (n names) allowSet(f family) string {
	if f == ipv6 {
		return n.allow6
	}
	return n.allow4
}

func (n names) banSet(f family) string {
	if f == ipv6 {
		return n.ban6
	}
	return n.ban4
}

// spec is everything the rules depend on, already resolved: which bans are
// active and whether the leak guard applies are decided by the caller from
// `now` and the engine version, so rendering is a pure function.
type spec struct {
	names        names
	allow        []netip.Prefix
	allowFam     map[family][]netip.Prefix // allow split by family and reduced (familyPrefixes); nil: computed by render
	bans         []netip.Addr
	banUntil     map[netip.Addr]int64 // unix expiry of each ban, written into its rule so a restarted agent can adopt it
	protect      []int
	block        []int
	leakPorts    []int // ports for the loopback leak guard; nil = no guard
	setThreshold int   // lists longer than this become ipsets; 0 = always rules
}

// jump is a rule that must be the first rule of a chain zguard does not own.
type jump struct {
	table, parent string
	rule          string   // rule spec as iptables-save prints it after "-A PARENT "
	alsoOK        []string // other first rules that satisfy the need (Docker's own jump)
}

// setSpec is an ipset zguard wants, with its entries.
type setSpec struct {
	family  family
	entries []netip.Prefix
}

// ruleset is the desired state of one family.
type ruleset struct {
	family family
	chains map[string][]string // "table/chain" -> rule specs, in order
	jumps  []jump
	sets   map[string]setSpec
}

// render computes the rules zguard wants for one family. The layout:
//
//	INPUT       -> PREFIX-INPUT    loopback returns; blocked ports drop; protected ports go to GATE
//	DOCKER-USER -> PREFIX-FORWARD  same, matched on the DNATed connection's original port
//	PREFIX-GATE                    bans drop; allowed sources return; everything else drops
//	raw PREROUTING -> PREFIX-RAW   (IPv4, Docker < 28) drop 127.0.0.0/8 not from lo to published ports
//
// Every rule matches every packet, not only NEW ones: no early ESTABLISHED
// accept lets a revoked or banned source keep an open connection.
func render(s spec, fam family) ruleset {
	n := s.names
	rs := ruleset{family: fam, chains: map[string][]string{}, sets: map[string]setSpec{}}
	allow, ok := s.allowFam[fam]
	if !ok {
		allow = familyPrefixes(s.allow, fam)
	}
	var bans []netip.Prefix
	for _, a := range s.bans {
		if (fam == ipv6) == a.Is6() {
			bans = append(bans, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	slices.SortFunc(bans, comparePrefix)

	var gate []string
	if len(bans) > 0 {
		if useSet(len(bans), s.setThreshold) {
			rs.sets[n.banSet(fam)] = setSpec{family: fam, entries: bans}
			gate = append(gate, fmt.Sprintf("-m set --match-set %s src %s -j DROP", n.banSet(fam), comment(cBan)))
		} else {
			for _, b := range bans {
				c := cBan
				if until, ok := s.banUntil[b.Addr()]; ok {
					c += ":" + strconv.FormatInt(until, 10)
				}
				gate = append(gate, fmt.Sprintf("-s %s %s -j DROP", b, comment(c)))
			}
		}
	}
	if len(allow) > 0 {
		if useSet(len(allow), s.setThreshold) {
			rs.sets[n.allowSet(fam)] = setSpec{family: fam, entries: allow}
			gate = append(gate, fmt.Sprintf("-m set --match-set %s src -j RETURN", n.allowSet(fam)))
		} else {
			for _, a := range allow {
				gate = append(gate, fmt.Sprintf("-s %s -j RETURN", a))
			}
		}
	}
	gate = append(gate, comment(cDeny)+" -j DROP")

	input := []string{"-i lo " + comment(cLoopback) + " -j RETURN"}
	var forward []string
	for _, proto := range []string{"tcp", "udp"} {
		for _, chunk := range chunkPorts(s.block) {
			input = append(input, fmt.Sprintf("-p %s -m multiport --dports %s %s -j DROP", proto, chunk, comment(cBlock)))
		}
		for _, chunk := range chunkPorts(s.protect) {
			input = append(input, fmt.Sprintf("-p %s -m multiport --dports %s %s -j %s", proto, chunk, comment(cProtect), n.gate))
		}
		for _, p := range s.block {
			forward = append(forward, fmt.Sprintf("-p %s %s %s -j DROP", proto, origPort(p), comment(cBlock)))
		}
		for _, p := range s.protect {
			forward = append(forward, fmt.Sprintf("-p %s %s %s -j %s", proto, origPort(p), comment(cProtect), n.gate))
		}
	}
	rs.chains["filter/"+n.gate] = gate
	rs.chains["filter/"+n.input] = input
	rs.chains["filter/"+n.forward] = forward
	rs.jumps = append(rs.jumps,
		jump{table: "filter", parent: "INPUT", rule: "-j " + n.input},
		jump{table: "filter", parent: "DOCKER-USER", rule: "-j " + n.forward},
		// Docker's FORWARD -> DOCKER-USER jump; zguard adds its own, marked,
		// only when none is first (Docker not started yet, or a firewalld
		// reload removed it).
		jump{table: "filter", parent: "FORWARD", rule: comment(n.dockerUserMark) + " -j DOCKER-USER", alsoOK: []string{"-j DOCKER-USER"}},
	)
	if fam == ipv4 && s.leakPorts != nil {
		var raw []string
		for _, proto := range []string{"tcp", "udp"} {
			for _, chunk := range chunkPorts(s.leakPorts) {
				raw = append(raw, fmt.Sprintf("-d 127.0.0.0/8 ! -i lo -p %s -m multiport --dports %s %s -j DROP", proto, chunk, comment(cLeakGuard)))
			}
		}
		rs.chains["raw/"+n.raw] = raw
		rs.jumps = append(rs.jumps, jump{table: "raw", parent: "PREROUTING", rule: "-j " + n.raw})
	}
	return rs
}

// comment renders a comment match the way iptables-save prints it.
func comment(c string) string { return `-m comment --comment "` + c + `"` }

// origPort matches a DNATed connection by the port the client asked for.
func origPort(p int) string {
	return fmt.Sprintf("-m conntrack --ctstate DNAT --ctorigdstport %d --ctdir ORIGINAL", p)
}

func useSet(n, threshold int) bool { return threshold > 0 && n > threshold }

// chunkPorts splits sorted ports into multiport lists of at most 15.
func chunkPorts(ports []int) []string {
	var out []string
	for i := 0; i < len(ports); i += maxMultiport {
		end := min(i+maxMultiport, len(ports))
		parts := make([]string, 0, end-i)
		for _, p := range ports[i:end] {
			parts = append(parts, strconv.Itoa(p))
		}
		out = append(out, strings.Join(parts, ","))
	}
	return out
}

// familyPrefixes returns the prefixes of one family, sorted, without
// entries already covered by a shorter one.
func familyPrefixes(ps []netip.Prefix, fam family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if (fam == ipv6) == p.Addr().Is6() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	// Sorted by length, so a covering prefix is always seen first; checking
	// each length already kept keeps this linear in practice.
	var kept []netip.Prefix
	keptSet := map[netip.Prefix]bool{}
	var lengths []int
	for _, p := range out {
		covered := false
		for _, b := range lengths {
			if b <= p.Bits() {
				if q, err := p.Addr().Prefix(b); err == nil && keptSet[q] {
					covered = true
					break
				}
			}
		}
		if covered {
			continue
		}
		kept = append(kept, p)
		keptSet[p] = true
		if !slices.Contains(lengths, p.Bits()) {
			lengths = append(lengths, p.Bits())
		}
	}
	slices.SortFunc(kept, comparePrefix)
	return kept
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortedPorts returns the ports sorted and without duplicates.
func sortedPorts(ps ...[]int) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
