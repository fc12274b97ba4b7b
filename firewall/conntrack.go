package firewall

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flow is the part of a conntrack entry the revocation policy looks at.
type flow struct {
	proto uint8
	src   netip.Addr // original source (the client)
	dst   netip.Addr // original destination (the address the client asked for)
	dport uint16     // original destination port
	dnat  bool       // the reply comes from elsewhere: Docker DNATed it to a container
}

// conntracker deletes conntrack entries; revocation uses it to cut
// connections that are already established.
type conntracker interface {
	// cut deletes every entry for which match is true, in both families,
	// and returns how many went.
	cut(match func(flow) bool) (uint, error)
	// localAddrs returns the host's own addresses.
	localAddrs() (map[netip.Addr]bool, error)
}

// netlinkConntrack talks to the kernel over netlink (no conntrack binary
// needed). A nil handle means the current network namespace.
type netlinkConntrack struct {
	h *netlink.Handle
}

func (n netlinkConntrack) handle() (*netlink.Handle, func(), error) {
	if n.h != nil {
		return n.h, func() {}, nil
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, nil, fmt.Errorf("opening netlink: %w", err)
	}
	return h, h.Close, nil
}

type matchFilter func(*netlink.ConntrackFlow) bool

func (m matchFilter) MatchConntrackFlow(f *netlink.ConntrackFlow) bool { return m(f) }

func (n netlinkConntrack) cut(match func(flow) bool) (uint, error) {
	h, done, err := n.handle()
	if err != nil {
		return 0, err
	}
	defer done()
	filter := matchFilter(func(cf *netlink.ConntrackFlow) bool {
		src, _ := netip.AddrFromSlice(cf.Forward.SrcIP)
		dst, _ := netip.AddrFromSlice(cf.Forward.DstIP)
		rsrc, _ := netip.AddrFromSlice(cf.Reverse.SrcIP)
		return match(flow{
			proto: cf.Forward.Protocol,
			src:   src.Unmap(),
			dst:   dst.Unmap(),
			dport: cf.Forward.DstPort,
			dnat:  rsrc.Unmap() != dst.Unmap(),
		})
	})
	var total uint
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		c, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filter)
		total += c
		if err != nil {
			return total, fmt.Errorf("deleting conntrack entries: %w", err)
		}
	}
	return total, nil
}

func (n netlinkConntrack) localAddrs() (map[netip.Addr]bool, error) {
	h, done, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer done()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing local addresses: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

// shouldCut is the revocation policy: an established connection to a
// protected port whose source is no longer allowed (or is banned), or to a
// blocked port from anywhere but loopback, is cut. Only connections to this
// host (a local destination, or one Docker DNATed) count; a container's own
// outgoing connections to some remote port 8080 are not zguard's business.
func shouldCut(f flow, s spec, local map[netip.Addr]bool) bool {
	if f.proto != unix.IPPROTO_TCP && f.proto != unix.IPPROTO_UDP {
		return false
	}
	if !f.src.IsValid() || f.src.IsLoopback() {
		return false
	}
	if !f.dnat && !local[f.dst] {
		return false
	}
	port := int(f.dport)
	for _, b := range s.block {
		if b == port {
			return true
		}
	}
	protected := false
	for _, p := range s.protect {
		if p == port {
			protected = true
		}
	}
	if !protected {
		return false
	}
	for _, b := range s.bans {
		if b == f.src {
			return true
		}
	}
	for _, a := range s.allow {
		if a.Contains(f.src) {
			return false
		}
	}
	return true
}
