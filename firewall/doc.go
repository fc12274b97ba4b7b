// Package firewall keeps zguard's IP allowlist in iptables and ip6tables:
// only allowlisted sources reach protected host ports, blocked ports
// (ComfyUI, Jupyter) are never reachable from outside, including through
// Docker's DNAT/FORWARD path (DOCKER-USER), and bans from other subsystems
// cut established connections at once.
//
// Layout, per family (PREFIX is firewall.chain_prefix):
//
//	INPUT          -> PREFIX-INPUT    loopback returns, blocked ports drop, protected ports go to the gate
//	DOCKER-USER    -> PREFIX-FORWARD  the same for DNATed connections, matched on the port the client asked for
//	PREFIX-GATE                       bans drop, allowed sources return, the rest drops
//	raw PREROUTING -> PREFIX-RAW      IPv4, Docker < 28: 127.0.0.0/8 not from lo to published ports drops
//
// Each jump is kept first in its chain. Allowlists longer than
// set_threshold live in an ipset (hash:net per family) referenced by one
// rule, so per-packet cost does not grow with the list.
//
// Policy is pure (render, diff, shouldCut: desired rules and revocation from
// the section, bans and `now`); mechanism is the tools behind a small
// interface. A reconcile reads the state (iptables-save, ipset), computes the
// difference and applies it as one iptables-restore --noflush transaction per
// family (declaring a chain flushes it, so packets see the old rules or the
// new, never a mix), after filling sets and swapping them in; then it reads
// back. go-iptables forks iptables once per rule and has neither restore nor
// ipset, so zguard drives the tools itself. Conntrack entries of revoked
// sources are deleted over netlink.
//
// The rules stay when the agent stops or crashes (fail closed); only
// Apply with enabled = false and `zguard cleanup` (Cleanup) remove them.
package firewall
