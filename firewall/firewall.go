package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zguard/zguard/config"
)

// Deps is what the firewall needs from outside. Nil fields get real
// defaults: slog.Default, time.Now, the iptables/ipset binaries of the
// current network namespace and netlink conntrack.
type Deps struct {
	// Log is the subsystem's logger (the agent passes one already tagged
	// subsystem=firewall; the default is tagged here).
	Log *slog.Logger
	Now func() time.Time
	// EngineVersion returns the Docker engine version ("20.10.24",
	// "28.1.0"; "" when unknown). Engines before 28 get the loopback leak
	// guard.
	EngineVersion func() string
	// PublishedPorts returns the host ports the managed container publishes
	// on loopback; the leak guard covers these and block_ports.
	PublishedPorts func() []int

	cmd commander   // nil: real binaries
	ct  conntracker // nil: netlink in this namespace
}

// Firewall keeps zguard's allowlist installed and repairs it when something
// else changes it. It is safe for concurrent use.
type Firewall struct {
	log       *slog.Logger
	now       func() time.Time
	engine    func() string
	published func() []int
	cmd       *countingCommander
	ct        conntracker

	mu    sync.Mutex // serialises reconciles; guards the fields below
	cfg   *config.Firewall
	allow []netip.Prefix
	// allowFam caches allow split per family: reducing 10,000 entries on
	// every timer tick would cost more than reading the kernel's state.
	allowFam map[family][]netip.Prefix
	bans     map[netip.Addr]time.Time
	env      environment
	applied  *spec // last spec installed, for revocation
	adopted  bool  // bans a previous run left in the rules were read back
	repairs  int
	// verified remembers, per ipset, the digest of the entries last seen
	// in full; while it matches, a reconcile reads only the set's header
	// (entry count) instead of dumping 10,000 entries. Every
	// fullCheckEvery-th look dumps the set anyway.
	verified map[string]string
	looks    int

	nudge chan string

	smu sync.Mutex
	st  Status
}

// New returns a Firewall that does nothing until Apply.
func New(d Deps) *Firewall {
	if d.Log == nil {
		d.Log = slog.Default().With("subsystem", "firewall")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.EngineVersion == nil {
		d.EngineVersion = func() string { return "" }
	}
	if d.PublishedPorts == nil {
		d.PublishedPorts = func() []int { return nil }
	}
	if d.cmd == nil {
		d.cmd = execCommander{}
	}
	if d.ct == nil {
		d.ct = netlinkConntrack{}
	}
	return &Firewall{
		log:       d.Log,
		now:       d.Now,
		engine:    d.EngineVersion,
		published: d.PublishedPorts,
		cmd:       &countingCommander{next: d.cmd},
		ct:        d.ct,
		bans:      map[netip.Addr]time.Time{},
		verified:  map[string]string{},
		nudge:     make(chan string, 1),
	}
}

// validPrefix checks a chain prefix: zguard's chain and set names derive
// from it, and ipset names may be at most 31 characters.
func validPrefix(p string) error {
	if l := len(p); l == 0 || l > 20 || strings.ContainsAny(p, " \t!/\"'") {
		return fmt.Errorf("invalid chain prefix %q: want 1-20 characters without spaces or quotes", p)
	}
	return nil
}

// validate checks a section as config.Parse would, for callers that build
// it by hand, and returns the parsed allowlist.
func validate(cfg config.Firewall) ([]netip.Prefix, error) {
	if err := validPrefix(cfg.ChainPrefix); err != nil {
		return nil, err
	}
	allow, err := config.ParseAllowlist(cfg.Allow)
	if err != nil {
		return nil, fmt.Errorf("parsing allowlist: %w", err)
	}
	for _, p := range allow {
		if p.Bits() == 0 {
			return nil, fmt.Errorf("allowlist entry %s allows everybody", p)
		}
	}
	for _, p := range slices.Concat(cfg.ProtectPorts, cfg.BlockPorts) {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("port %d out of range 1-65535", p)
		}
	}
	for _, p := range cfg.ProtectPorts {
		if slices.Contains(cfg.BlockPorts, p) {
			return nil, fmt.Errorf("port %d is both protected and blocked", p)
		}
	}
	switch cfg.IPv6 {
	case "", "auto", "on", "off":
	default:
		return nil, fmt.Errorf("ipv6 must be auto, on or off, got %q", cfg.IPv6)
	}
	return allow, nil
}

// Apply installs the section's rules, or changes them to it. A section with
// Enabled=false removes zguard's rules: switching the firewall off is the
// operator's explicit choice. (Stopping or crashing the agent keeps them:
// the host fails closed.) On error the previous section stays in force.
func (f *Firewall) Apply(ctx context.Context, cfg config.Firewall) error {
	allow, err := validate(cfg)
	if err != nil {
		return fmt.Errorf("validating firewall config: %w", err)
	}
	cfg.Prefixes = allow
	cfg.ProtectPorts = sortedPorts(cfg.ProtectPorts)
	cfg.BlockPorts = sortedPorts(cfg.BlockPorts)

	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.cfg
	oldAllow := f.allow

	if !cfg.Enabled {
		var errs []error
		for _, p := range prefixesOf(old, &cfg) {
			if err := cleanup(ctx, f.cmd, p, f.log); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			f.setError(err)
			return fmt.Errorf("removing firewall rules: %w", err)
		}
		f.cfg, f.allow, f.allowFam, f.applied = &cfg, allow, nil, nil
		f.log.Info("firewall disabled; zguard's rules removed", "prefix", cfg.ChainPrefix)
		f.setStatus(func(s *Status) {
			*s = Status{Enabled: false, Backend: s.Backend, InSync: true, LastApply: f.now()}
		})
		return nil
	}

	f.env = detect(ctx, f.cmd)
	if !f.adopted {
		f.adoptBans(ctx, namesFor(cfg.ChainPrefix))
		f.adopted = true
	}
	oldFam := f.allowFam
	f.cfg, f.allow, f.allowFam = &cfg, allow, splitFamilies(allow)
	if err := f.reconcileLocked(ctx, "apply", true); err != nil {
		// Put the previous section back, rules included.
		f.cfg, f.allow, f.allowFam = old, oldAllow, oldFam
		if old != nil && old.Enabled {
			if rerr := f.reconcileLocked(ctx, "rollback", true); rerr != nil {
				f.log.Error("restoring previous firewall rules", "err", rerr)
			}
		}
		return err
	}
	if old != nil && old.ChainPrefix != cfg.ChainPrefix {
		if err := cleanup(ctx, f.cmd, old.ChainPrefix, f.log); err != nil {
			f.log.Warn("removing rules of the previous chain prefix", "prefix", old.ChainPrefix, "err", err)
		}
	}
	return nil
}

func splitFamilies(allow []netip.Prefix) map[family][]netip.Prefix {
	return map[family][]netip.Prefix{ipv4: familyPrefixes(allow, ipv4), ipv6: familyPrefixes(allow, ipv6)}
}

func prefixesOf(old, cur *config.Firewall) []string {
	out := []string{cur.ChainPrefix}
	if old != nil && old.ChainPrefix != cur.ChainPrefix {
		out = append(out, old.ChainPrefix)
	}
	return out
}

// Run re-asserts the rules on a timer and whenever Repair is called, and
// lifts expired bans. It never removes rules when ctx ends: the host stays
// protected while the agent is down.
func (f *Firewall) Run(ctx context.Context) error {
	for {
		wait := f.nextWake()
		t := time.NewTimer(wait)
		reason := "timer"
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case reason = <-f.nudge:
			t.Stop()
		case <-t.C:
		}
		f.mu.Lock()
		if f.cfg != nil && f.cfg.Enabled {
			if err := f.reconcileLocked(ctx, reason, false); err != nil && ctx.Err() == nil {
				f.log.Error("reconciling firewall rules", "reason", reason, "err", err)
			}
		}
		f.mu.Unlock()
	}
}

// nextWake is the reconcile interval, or sooner when a ban expires first.
func (f *Firewall) nextWake() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	wait := 10 * time.Second
	if f.cfg != nil && f.cfg.ReconcileInterval.D() > 0 {
		wait = f.cfg.ReconcileInterval.D()
	}
	if exp, ok := nextExpiry(f.bans, f.now()); ok {
		wait = min(wait, exp+10*time.Millisecond)
	}
	return max(wait, 10*time.Millisecond)
}

// Repair asks Run to re-assert the rules now (Docker daemon (re)started, a
// network was created). It never blocks.
func (f *Firewall) Repair(reason string) {
	select {
	case f.nudge <- reason:
	default:
	}
}

// Ban drops every packet from addr to the protected ports until d has
// passed, and cuts its established connections at once. The gateway's
// brute-force lockout uses it.
func (f *Firewall) Ban(addr netip.Addr, d time.Duration) error {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsLoopback() || addr.IsUnspecified() {
		return fmt.Errorf("banning %s: not a bannable address", addr)
	}
	if d <= 0 {
		return fmt.Errorf("banning %s: duration must be positive", addr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cfg == nil || !f.cfg.Enabled {
		return fmt.Errorf("banning %s: the firewall is disabled", addr)
	}
	until := f.now().Add(d)
	if until.After(f.bans[addr]) {
		f.bans[addr] = until
	}
	f.log.Info("banning address", "addr", addr, "until", until.UTC().Format(time.RFC3339))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return f.reconcileLocked(ctx, "ban", true)
}

// Unban lifts a ban before it expires.
func (f *Firewall) Unban(addr netip.Addr) error {
	addr = addr.Unmap()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.bans[addr]; !ok {
		return nil
	}
	delete(f.bans, addr)
	f.log.Info("unbanning address", "addr", addr)
	if f.cfg == nil || !f.cfg.Enabled {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return f.reconcileLocked(ctx, "unban", true)
}

// adoptBans reads back bans a previous run of the agent left in the rules
// (their expiry is in the rule's comment), so restarting the agent does
// not lift them. Bans held in an ipset (more than set_threshold) are not
// adopted.
func (f *Firewall) adoptBans(ctx context.Context, n names) {
	now := f.now()
	for _, fam := range []family{ipv4, ipv6} {
		out, err := f.cmd.run(ctx, nil, fam.tool()+"-save", "-t", "filter")
		if err != nil {
			continue
		}
		ts, err := parseSave(out)
		if err != nil {
			continue
		}
		rules, _ := ts.chain("filter/" + n.gate)
		for addr, until := range parseBans(rules) {
			if until.After(now) && until.After(f.bans[addr]) {
				f.bans[addr] = until
				f.log.Info("kept ban from the previous run", "addr", addr, "until", until.UTC().Format(time.RFC3339))
			}
		}
	}
}

// activeBans returns the bans in force at now, sorted.
func activeBans(bans map[netip.Addr]time.Time, now time.Time) []netip.Addr {
	var out []netip.Addr
	for a, until := range bans {
		if now.Before(until) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// nextExpiry returns how long until the next active ban expires.
func nextExpiry(bans map[netip.Addr]time.Time, now time.Time) (time.Duration, bool) {
	var next time.Duration
	found := false
	for _, until := range bans {
		if d := until.Sub(now); d > 0 && (!found || d < next) {
			next, found = d, true
		}
	}
	return next, found
}

// buildSpec resolves the section, bans and engine into a spec at now.
func buildSpec(cfg *config.Firewall, allow []netip.Prefix, allowFam map[family][]netip.Prefix, bans map[netip.Addr]time.Time, now time.Time, engine string, published []int) spec {
	s := spec{
		names:        namesFor(cfg.ChainPrefix),
		allow:        allow,
		allowFam:     allowFam,
		bans:         activeBans(bans, now),
		banUntil:     map[netip.Addr]int64{},
		protect:      cfg.ProtectPorts,
		block:        cfg.BlockPorts,
		setThreshold: cfg.SetThreshold,
	}
	for _, a := range s.bans {
		s.banUntil[a] = bans[a].Unix()
	}
	if needsLeakGuard(engine) {
		// A non-nil empty list still installs the (empty) chain, so the
		// guard shows as active before any port is published.
		s.leakPorts = append([]int{}, sortedPorts(published, cfg.BlockPorts)...)
	}
	return s
}

// families returns the families to install and the ones to clear.
func (f *Firewall) families() (install, clear []family) {
	install = []family{ipv4}
	v6 := f.cfg.IPv6
	switch {
	case v6 == "off":
		if f.env.ipv6 {
			clear = append(clear, ipv6)
		}
	case f.env.ipv6:
		install = append(install, ipv6)
	}
	return install, clear
}

// reconcileLocked makes the installed rules match the current section and
// bans. expected says the caller changed the wanted state (apply, ban):
// then differences are the change itself, not drift to report.
func (f *Firewall) reconcileLocked(ctx context.Context, reason string, expected bool) error {
	now := f.now()
	for a, until := range f.bans {
		if !now.Before(until) {
			delete(f.bans, a)
			f.log.Info("ban expired", "addr", a)
			expected = true // the rule change is the expiry, not drift
		}
	}
	s := buildSpec(f.cfg, f.allow, f.allowFam, f.bans, now, f.engine(), f.published())
	install, clear := f.families()
	if f.cfg.IPv6 == "on" && !f.env.ipv6 {
		err := errors.New("ipv6 = \"on\" but ip6tables is not usable on this host")
		f.setError(err)
		return err
	}

	writesBefore := f.cmd.writes
	start := time.Now()
	var drift []string
	drops := map[string]uint64{}
	usesSets := false
	for _, fam := range install {
		d, c, sets, err := f.reconcileFamily(ctx, s, fam)
		usesSets = usesSets || sets
		drift = append(drift, d...)
		for k, v := range c {
			drops[k] += v
		}
		if err != nil {
			f.setError(err)
			return err
		}
	}
	for _, fam := range clear {
		n, err := removeFamily(ctx, f.cmd, s.names, fam, false)
		if err != nil {
			f.setError(err)
			return err
		}
		if n > 0 {
			drift = append(drift, fmt.Sprintf("%s: removed rules (ipv6 = \"off\")", fam))
		}
	}

	// Revocation: connections that the new rules would refuse are cut now,
	// not when they next send a packet.
	var cut uint
	if f.applied == nil || !sameAccess(*f.applied, s) {
		local, err := f.ct.localAddrs()
		if err == nil {
			cut, err = f.ct.cut(func(fl flow) bool { return shouldCut(fl, s, local) })
		}
		if err != nil {
			f.log.Warn("cutting revoked connections", "err", err)
		} else if cut > 0 {
			f.log.Info("cut connections no longer allowed", "count", cut)
		}
	}
	f.applied = &s
	elapsed := time.Since(start)
	writes := f.cmd.writes - writesBefore

	if len(drift) > 0 && !expected {
		f.repairs++
		f.log.Warn("firewall drift repaired", "reason", reason, "drift", drift)
	} else if len(drift) > 0 {
		f.log.Info("firewall rules applied", "reason", reason, "changes", len(drift), "took", elapsed)
	}
	f.setStatus(func(st *Status) {
		st.Enabled = true
		st.Backend = f.env.backend
		st.Protected = f.env.mixed == "" && !f.env.dockerNft
		st.Mixed = f.env.mixed
		st.DockerNftables = f.env.dockerNft
		st.Allow = prefixStrings(f.allow)
		st.ProtectedPorts = append([]int{}, f.cfg.ProtectPorts...) // [] rather than null in JSON
		st.BlockedPorts = append([]int{}, f.cfg.BlockPorts...)
		st.IPv6 = slices.Contains(install, ipv6)
		st.InSync = true
		st.Error = ""
		st.Drops = drops
		st.DroppedPackets = 0
		for _, v := range drops {
			st.DroppedPackets += v
		}
		st.Banned = []Banned{}
		for _, a := range s.bans {
			st.Banned = append(st.Banned, Banned{Addr: a.String(), Until: f.bans[a].UTC()})
		}
		st.LeakGuard = LeakGuard{Active: s.leakPorts != nil, Engine: f.engine(), Ports: s.leakPorts}
		st.UsesSets = usesSets
		st.Repairs = f.repairs
		st.LastCheck = now
		st.LastWrites = writes
		st.LastDuration = elapsed.String()
		if len(drift) > 0 {
			if expected {
				st.LastApply = now
			} else {
				st.LastDrift = &Drift{Time: now, Reason: reason, Changes: drift}
			}
		}
		st.ConnectionsCut += cut
	})
	return nil
}

// sameAccess reports whether two specs admit the same sources to the same
// ports; when they do, no established connection needs cutting.
func sameAccess(a, b spec) bool {
	return slices.Equal(a.allow, b.allow) && slices.Equal(a.bans, b.bans) &&
		slices.Equal(a.protect, b.protect) && slices.Equal(a.block, b.block)
}

// reconcileFamily observes one family, applies the difference and checks
// the result. It returns the drift found and the drop counters.
func (f *Firewall) reconcileFamily(ctx context.Context, s spec, fam family) ([]string, map[string]uint64, bool, error) {
	want := render(s, fam)
	have, sets, err := f.observe(ctx, fam, s.names, want)
	if err != nil {
		return nil, nil, false, err
	}
	drops := counts(have, s.names)
	ch := diff(want, have, sets, s.names)
	if ch.empty() {
		return nil, drops, len(want.sets) > 0, nil
	}
	if err := f.install(ctx, fam, ch); err != nil {
		return ch.drift, drops, false, err
	}
	// Read back: what iptables prints must be what was asked for, or every
	// reconcile would rewrite the rules and never report in sync.
	have, sets, err = f.observe(ctx, fam, s.names, want)
	if err != nil {
		return ch.drift, drops, false, err
	}
	if again := diff(want, have, sets, s.names); !again.empty() {
		return ch.drift, drops, false, fmt.Errorf("%s rules still differ after applying: %s", fam, strings.Join(again.drift, "; "))
	}
	return ch.drift, drops, len(want.sets) > 0, nil
}

// observe reads a family's tables and zguard's sets.
func (f *Firewall) observe(ctx context.Context, fam family, n names, want ruleset) (tables, haveSets, error) {
	out, err := f.cmd.run(ctx, nil, fam.tool()+"-save", "-c")
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s rules: %w", fam, err)
	}
	have, err := parseSave(out)
	if err != nil {
		return nil, nil, err
	}
	sets := haveSets{}
	list, err := f.cmd.run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		if len(want.sets) > 0 {
			return nil, nil, fmt.Errorf("listing ipsets (needed for allowlists over set_threshold): %w", err)
		}
		return have, sets, nil
	}
	mine := map[string]bool{}
	for _, s := range []string{n.allowSet(fam), n.banSet(fam)} {
		mine[s], mine[s+n.tmpSuffix] = true, true
	}
	for l := range strings.Lines(string(list)) {
		name := strings.TrimSpace(l)
		if !mine[name] {
			continue
		}
		sets[name] = nil
		ws, wanted := want.sets[name]
		if !wanted {
			continue
		}
		dg := digest(ws.entries)
		f.looks++
		if f.verified[name] == dg && f.looks%fullCheckEvery != 0 {
			n, err := f.setSize(ctx, name)
			if err != nil {
				return nil, nil, err
			}
			if n == len(ws.entries) {
				sets[name] = ws.entries
				continue
			}
		}
		data, err := f.cmd.run(ctx, nil, "ipset", "save", name)
		if err != nil {
			return nil, nil, fmt.Errorf("reading set %s: %w", name, err)
		}
		if sets[name], err = parseSetSave(data); err != nil {
			return nil, nil, err
		}
		if samePrefixes(sets[name], ws.entries) {
			f.verified[name] = dg
		} else {
			delete(f.verified, name)
		}
	}
	return have, sets, nil
}

// fullCheckEvery: one look in this many dumps a set's entries even when
// its header matches, to catch an entry swapped for another by hand.
const fullCheckEvery = 10

// setSize reads a set's entry count from its header (`ipset list -t`).
func (f *Firewall) setSize(ctx context.Context, name string) (int, error) {
	out, err := f.cmd.run(ctx, nil, "ipset", "list", "-t", name)
	if err != nil {
		return 0, fmt.Errorf("reading set %s: %w", name, err)
	}
	return parseSetSize(out)
}

// install applies a change: sets first (rules may reference them), then
// one iptables-restore transaction, then unreferenced sets go.
func (f *Firewall) install(ctx context.Context, fam family, ch change) error {
	if len(ch.setsBefore) > 0 {
		if _, err := f.cmd.run(ctx, ch.setsBefore, "ipset", "restore"); err != nil {
			return fmt.Errorf("updating %s sets: %w", fam, err)
		}
	}
	if len(ch.restore) > 0 {
		if _, err := f.cmd.run(ctx, ch.restore, fam.tool()+"-restore", "-w", "--noflush"); err != nil {
			return fmt.Errorf("installing %s rules: %w", fam, err)
		}
	}
	for _, s := range ch.setsAfter {
		if _, err := f.cmd.run(ctx, nil, "ipset", "destroy", s); err != nil {
			return fmt.Errorf("destroying set %s: %w", s, err)
		}
	}
	return nil
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// setError records a failed reconcile or removal. Either way rules may be
// installed, or missing, against the operator's wish: the status counts as
// enabled so the error shows as a finding.
func (f *Firewall) setError(err error) {
	f.setStatus(func(s *Status) {
		s.Enabled = true
		s.InSync = false
		s.Error = err.Error()
		s.LastCheck = f.now()
	})
}

func (f *Firewall) setStatus(update func(*Status)) {
	f.smu.Lock()
	defer f.smu.Unlock()
	update(&f.st)
}

// Status returns a snapshot of the firewall's state.
func (f *Firewall) Status() Status {
	f.smu.Lock()
	defer f.smu.Unlock()
	s := f.st
	s.Allow = slices.Clone(s.Allow)
	s.Banned = slices.Clone(s.Banned)
	s.Drops = maps.Clone(s.Drops)
	if s.LastDrift != nil {
		d := *s.LastDrift
		s.LastDrift = &d
	}
	return s
}
