package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/gateway/credfile"
)

// Banner is what the gateway needs from the firewall: ban an address for a
// while (its packets dropped, its tracked connections forgotten) and lift a
// ban. The agent passes the firewall subsystem.
type Banner interface {
	Ban(addr netip.Addr, d time.Duration) error
	Unban(addr netip.Addr) error
}

// Deps is the gateway's mechanism. Nil fields get real defaults; a nil
// Banner means there is no firewall and bans are enforced in-process only.
type Deps struct {
	Log    *slog.Logger
	Now    func() time.Time
	Banner Banner
}

// Timeouts and sizes that keep slow or hostile clients from holding the
// gateway; ReadTimeout and WriteTimeout stay unset because uploads, the
// /ws stream and image downloads are legitimately long.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
	verdictCacheSize  = 4096
	pollInterval      = time.Second
	maxTrackedAddrs   = 1 << 16 // failure histories kept at once
)

// Gateway is the authenticating reverse proxy. Create it with New, then
// call Apply and Run; all methods are safe for concurrent use.
type Gateway struct {
	log    *slog.Logger
	now    func() time.Time
	banner Banner

	auth      *authenticator
	limits    *promptLimits
	audit     auditLog
	conns     *connSet
	transport *http.Transport    // requests with bodies, upgrades, /queue polls
	upstream  *upstreamTransport // bodiless GET/HEAD fast path, falls back to transport
	proxy     *httputil.ReverseProxy

	applyMu sync.Mutex // serialises Apply and credential reloads
	cur     atomic.Pointer[settings]
	creds   atomic.Pointer[credentials]

	mu        sync.Mutex // guards the fields below
	listeners map[string]*listener
	failures  map[netip.Addr][]time.Time
	bans      map[netip.Addr]*banEntry
	stamps    [2]fileStamp // htpasswd, tokens as last loaded
	credErr   string       // last failed background reload; old credentials stay
	missing   []string     // configured credential files that do not exist
	serveErr  string

	requests     atomic.Uint64
	denied       atomic.Uint64
	authFailures atomic.Uint64
}

// settings is everything derived from one applied config section.
type settings struct {
	cfg            config.Gateway
	upstream       *url.URL
	upstreamOrigin string
	exempt         []netip.Prefix
	admins         map[string]bool
	tls            *tls.Config // nil: plain HTTP
	users, tokens  int
}

type banEntry struct {
	Until    time.Time
	Firewall bool
	Err      string
}

// New returns a gateway that serves nothing until Apply enables it.
func New(d Deps) *Gateway {
	if d.Log == nil {
		// The agent hands in its subsystem child logger; alone, make one.
		d.Log = slog.Default().With("subsystem", "gateway")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	g := &Gateway{
		log:       d.Log,
		now:       d.Now,
		banner:    d.Banner,
		limits:    newPromptLimits(),
		conns:     newConnSet(),
		listeners: map[string]*listener{},
		failures:  map[netip.Addr][]time.Time{},
		bans:      map[netip.Addr]*banEntry{},
		transport: &http.Transport{
			Proxy:                 nil, // never send ComfyUI traffic to an environment proxy
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 0, // /prompt and /view may take a while
			DisableCompression:    true,
			ForceAttemptHTTP2:     false,
		},
	}
	g.upstream = newUpstreamTransport(g.transport)
	g.auth = newAuthenticator(runtime.GOMAXPROCS(0), verdictCacheSize)
	g.cur.Store(&settings{})
	g.proxy = g.newProxy()
	return g
}

// Apply validates and installs a gateway section. It (re)loads the
// htpasswd and tokens files (a malformed line is an error naming the line,
// and the previous files stay in force), reopens the audit log (so a
// rotated log is released), reloads the TLS certificate, and binds or
// closes listeners whose addresses changed. TLS can be switched on or off
// without rebinding. With Enabled=false the gateway stands down: every
// listener and client connection is closed, so ComfyUI is reachable only
// on loopback; bans already made stay until they expire.
func (g *Gateway) Apply(ctx context.Context, cfg config.Gateway) error {
	g.applyMu.Lock()
	defer g.applyMu.Unlock()
	if !cfg.Enabled {
		g.closeListeners(nil)
		g.conns.cutAll()
		g.audit.swap("", nil)
		g.cur.Store(&settings{cfg: cfg})
		g.log.Info("gateway disabled")
		return nil
	}
	s, err := g.prepare(cfg)
	if err != nil {
		return err
	}
	creds, stamps, missing, err := g.loadCredentials(cfg, true)
	if err != nil {
		return err
	}
	var audit *os.File
	if cfg.AuditLog != "" {
		if audit, err = openAudit(cfg.AuditLog); err != nil {
			return err
		}
	}
	bound, err := g.bindNew(cfg.Listen)
	if err != nil {
		if audit != nil {
			audit.Close()
		}
		return err
	}

	// Nothing can fail from here on: commit.
	s.users, s.tokens = len(creds.users), len(creds.tokens)
	bc := cfg.BcryptConcurrency
	if bc <= 0 {
		bc = runtime.GOMAXPROCS(0)
	}
	g.auth.setConcurrency(bc)
	g.limits.configure(cfg.MaxConcurrentPrompts, cfg.PromptsPerMinute)
	g.cur.Store(s)
	g.creds.Store(creds)
	g.audit.swap(cfg.AuditLog, audit)
	g.mu.Lock()
	g.stamps, g.missing, g.credErr = stamps, missing, ""
	g.mu.Unlock()
	g.closeListeners(cfg.Listen)
	for _, l := range bound {
		g.serve(l)
	}
	g.log.Info("gateway applied", "listen", cfg.Listen, "tls", s.tls != nil, "upstream", s.upstream.String(),
		"users", s.users, "tokens", s.tokens, "audit_log", cfg.AuditLog)
	return nil
}

// prepare checks everything in cfg that needs no I/O.
func (g *Gateway) prepare(cfg config.Gateway) (*settings, error) {
	u, err := url.Parse(cfg.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("parsing upstream %q: want http://host:port", cfg.Upstream)
	}
	s := &settings{cfg: cfg, upstream: u, upstreamOrigin: u.Scheme + "://" + u.Host, admins: map[string]bool{}}
	for _, e := range cfg.LockoutExempt {
		p, err := config.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("parsing lockout_exempt %q: %w", e, err)
		}
		s.exempt = append(s.exempt, p)
	}
	for _, a := range cfg.Admins {
		s.admins[a] = true
	}
	if len(cfg.Listen) == 0 {
		return nil, errors.New("gateway.listen is empty")
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("loading TLS certificate: %w", err)
		}
		s.tls = &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"http/1.1"},
		}
	}
	return s, nil
}

// fileStamp identifies one version of a file, to notice edits cheaply.
type fileStamp struct {
	exists bool
	mod    time.Time
	size   int64
	ino    uint64
}

func stampOf(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st := fileStamp{exists: true, mod: fi.ModTime(), size: fi.Size()}
	st.ino = inode(fi)
	return st
}

// loadCredentials reads both files. A file that does not exist counts as
// empty (reported in status); one that cannot be read or parsed is an error.
func (g *Gateway) loadCredentials(cfg config.Gateway, _ bool) (*credentials, [2]fileStamp, []string, error) {
	var stamps [2]fileStamp
	var missing []string
	var users []credfile.User
	var tokens []credfile.Token
	if cfg.Htpasswd != "" {
		stamps[0] = stampOf(cfg.Htpasswd)
		u, err := credfile.ReadHtpasswd(cfg.Htpasswd)
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, cfg.Htpasswd)
		case err != nil:
			return nil, stamps, nil, fmt.Errorf("loading htpasswd: %w", err)
		}
		users = u
	}
	if cfg.Tokens != "" {
		stamps[1] = stampOf(cfg.Tokens)
		t, err := credfile.ReadTokens(cfg.Tokens)
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, cfg.Tokens)
		case err != nil:
			return nil, stamps, nil, fmt.Errorf("loading tokens: %w", err)
		}
		tokens = t
	}
	// Keep the unknown-user hash when the htpasswd file did not change, so
	// a token-only edit costs no bcrypt.
	if old := g.creds.Load(); old != nil && sameUsers(old.users, users) {
		c := &credentials{users: old.users, tokens: tokens, fake: old.fake}
		return c, stamps, missing, nil
	}
	c, err := newCredentials(users, tokens)
	return c, stamps, missing, err
}

func sameUsers(m map[string][]byte, users []credfile.User) bool {
	if len(m) != len(users) {
		return false
	}
	for _, u := range users {
		if h, ok := m[u.Name]; !ok || string(h) != string(u.Hash) {
			return false
		}
	}
	return true
}

// reloadIfChanged reloads the credential files when either changed on
// disk. A failed reload keeps the old credentials and is shown in status.
func (g *Gateway) reloadIfChanged() {
	s := g.cur.Load()
	if !s.cfg.Enabled {
		return
	}
	now := [2]fileStamp{stampOf(s.cfg.Htpasswd), stampOf(s.cfg.Tokens)}
	g.mu.Lock()
	same := now == g.stamps
	g.mu.Unlock()
	if same {
		return
	}
	g.applyMu.Lock()
	defer g.applyMu.Unlock()
	if g.cur.Load() != s {
		return // Apply ran meanwhile and loaded the files itself
	}
	creds, stamps, missing, err := g.loadCredentials(s.cfg, false)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.stamps = now // do not retry the same broken file every second
		if g.credErr != err.Error() {
			g.log.Error("reloading credentials; the previous ones stay in force", "err", err)
		}
		g.credErr = err.Error()
		return
	}
	g.creds.Store(creds)
	ns := *s
	ns.users, ns.tokens = len(creds.users), len(creds.tokens)
	g.cur.Store(&ns)
	g.stamps, g.missing, g.credErr = stamps, missing, ""
	g.log.Info("credentials reloaded", "users", ns.users, "tokens", ns.tokens)
}

// Run serves until ctx ends. Once a second it flushes the audit log,
// reloads edited credential files, forgets expired bans and failures, and
// asks ComfyUI's queue which tracked prompts have finished. When ctx ends
// every listener and connection is closed.
func (g *Gateway) Run(ctx context.Context) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	defer func() {
		g.applyMu.Lock()
		g.closeListeners(nil)
		g.conns.cutAll()
		g.audit.close()
		g.upstream.closeIdle()
		g.applyMu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		g.audit.flush()
		g.reloadIfChanged()
		g.expire(g.now())
		if len(g.limits.tracked()) > 0 {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := g.refreshPrompts(qctx); err != nil && ctx.Err() == nil {
				g.log.Debug("polling ComfyUI's queue", "err", err)
			}
			cancel()
		}
	}
}

// expire drops bans and failure histories that have run out.
func (g *Gateway) expire(now time.Time) {
	window := g.cur.Load().cfg.Lockout.Window.D()
	g.mu.Lock()
	defer g.mu.Unlock()
	for a, b := range g.bans {
		if !now.Before(b.Until) {
			delete(g.bans, a)
		}
	}
	for a, h := range g.failures {
		if len(h) == 0 || now.Sub(h[len(h)-1]) >= window {
			delete(g.failures, a)
		}
	}
}

// banned reports whether addr is under an in-process ban at now.
func (g *Gateway) banned(addr netip.Addr, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.bans[addr]
	return ok && now.Before(b.Until)
}

// loginFailed counts a failed login from addr and, at the lockout
// threshold, bans the address: in the firewall (if there is one), in
// process, and by closing its open connections except keep (the
// connection of the failing request, which is closed after its answer).
// It reports whether the address is now banned.
func (g *Gateway) loginFailed(s *settings, addr netip.Addr, keep net.Conn) bool {
	g.authFailures.Add(1)
	lo := s.cfg.Lockout
	if !addr.IsValid() || lo.Failures <= 0 || exempt(s.exempt, addr) {
		return false
	}
	now := g.now()
	g.mu.Lock()
	if _, known := g.failures[addr]; !known && len(g.failures) >= maxTrackedAddrs {
		// Bound the memory a flood from many addresses can take: forget
		// one history (map order is random enough for this).
		for a := range g.failures {
			delete(g.failures, a)
			break
		}
	}
	h, ban := recordFailure(g.failures[addr], now, lo.Window.D(), lo.Failures)
	if !ban {
		g.failures[addr] = h
		g.mu.Unlock()
		return false
	}
	delete(g.failures, addr)
	entry := &banEntry{Until: now.Add(lo.Ban.D())}
	g.bans[addr] = entry
	g.mu.Unlock()

	var banErr error
	if g.banner != nil {
		banErr = g.banner.Ban(addr, lo.Ban.D())
	}
	cut := g.conns.cut(addr, keep)
	g.mu.Lock()
	entry.Firewall = g.banner != nil && banErr == nil
	if banErr != nil {
		entry.Err = banErr.Error()
	}
	g.mu.Unlock()
	g.log.Warn("address locked out after failed logins", "addr", addr, "failures", lo.Failures,
		"window", lo.Window.D(), "ban", lo.Ban.D(), "firewall", entry.Firewall, "connections_cut", cut, "err", banErr)
	return true
}

// listener is one bound address with its server.
type listener struct {
	addr string
	ln   net.Listener
	srv  *http.Server
}

// bindNew binds the addresses in want that are not bound yet. On error the
// ones it bound are closed again and nothing changes.
func (g *Gateway) bindNew(want []string) ([]*listener, error) {
	g.mu.Lock()
	have := map[string]bool{}
	for a := range g.listeners {
		have[a] = true
	}
	g.mu.Unlock()
	var out []*listener
	for _, a := range want {
		if have[a] {
			continue
		}
		have[a] = true
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range out {
				l.ln.Close()
			}
			return nil, fmt.Errorf("binding gateway listener: %w", err)
		}
		out = append(out, &listener{addr: a, ln: ln})
	}
	return out, nil
}

// serve starts serving a freshly bound listener.
func (g *Gateway) serve(l *listener) {
	l.srv = &http.Server{
		Handler:           g,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only: /ws needs Upgrade
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	g.mu.Lock()
	g.listeners[l.addr] = l
	g.mu.Unlock()
	go func() {
		err := l.srv.Serve(&guardedListener{Listener: l.ln, g: g})
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("gateway listener stopped", "addr", l.addr, "err", err)
			g.mu.Lock()
			g.serveErr = fmt.Sprintf("listener %s stopped: %v", l.addr, err)
			g.mu.Unlock()
		}
	}()
}

// closeListeners closes every listener whose address is not in keep.
func (g *Gateway) closeListeners(keep []string) {
	g.mu.Lock()
	var gone []*listener
	for a, l := range g.listeners {
		if !slices.Contains(keep, a) {
			gone = append(gone, l)
			delete(g.listeners, a)
		}
	}
	g.mu.Unlock()
	for _, l := range gone {
		l.srv.Close()
		g.log.Info("gateway listener closed", "addr", l.addr)
	}
}

type connKey struct{}

// guardedListener drops connections from banned addresses at accept, tracks
// the others by source address (so a ban can cut them), and wraps them in
// TLS when the current settings have a certificate.
type guardedListener struct {
	net.Listener
	g *Gateway
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := addrOf(c.RemoteAddr())
		if l.g.banned(addr, l.g.now()) {
			c.Close()
			continue
		}
		tc := l.g.conns.add(addr, c)
		if cfg := l.g.cur.Load().tls; cfg != nil {
			return tls.Server(tc, cfg), nil
		}
		return tc, nil
	}
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// connSet tracks open client connections by source address.
type connSet struct {
	mu sync.Mutex
	m  map[netip.Addr]map[*trackedConn]struct{}
}

func newConnSet() *connSet { return &connSet{m: map[netip.Addr]map[*trackedConn]struct{}{}} }

// trackedConn leaves its set when closed, by whoever closes it: the HTTP
// server, the reverse proxy after a WebSocket, or a ban.
type trackedConn struct {
	net.Conn
	set  *connSet
	addr netip.Addr
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.set.remove(c) })
	return c.Conn.Close()
}

func (s *connSet) add(addr netip.Addr, c net.Conn) *trackedConn {
	tc := &trackedConn{Conn: c, set: s, addr: addr}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[addr] == nil {
		s.m[addr] = map[*trackedConn]struct{}{}
	}
	s.m[addr][tc] = struct{}{}
	return tc
}

func (s *connSet) remove(c *trackedConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m[c.addr], c)
	if len(s.m[c.addr]) == 0 {
		delete(s.m, c.addr)
	}
}

// cut closes every connection from addr except keep and returns how many.
func (s *connSet) cut(addr netip.Addr, keep net.Conn) int {
	if tc, ok := keep.(*tls.Conn); ok {
		keep = tc.NetConn()
	}
	s.mu.Lock()
	var victims []*trackedConn
	for c := range s.m[addr] {
		if net.Conn(c) != keep {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
	return len(victims)
}

func (s *connSet) cutAll() {
	s.mu.Lock()
	var all []*trackedConn
	for _, m := range s.m {
		for c := range m {
			all = append(all, c)
		}
	}
	s.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}

func (s *connSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.m {
		n += len(m)
	}
	return n
}

// Status is the gateway's part of `zguard status`.
type Status struct {
	Enabled         bool           `json:"enabled"`
	Listen          []string       `json:"listen"`
	TLS             bool           `json:"tls"`
	Upstream        string         `json:"upstream,omitempty"`
	Identities      int            `json:"identities"`
	Users           int            `json:"users"`
	Tokens          int            `json:"tokens"`
	Requests        uint64         `json:"requests"`
	Denied          uint64         `json:"denied"`
	AuthFailures    uint64         `json:"auth_failures"`
	Connections     int            `json:"connections"`
	Banned          []Ban          `json:"banned"`
	RunningPrompts  map[string]int `json:"running_prompts,omitempty"`
	CredentialError string         `json:"credential_error,omitempty"`
	MissingFiles    []string       `json:"missing_files,omitempty"`
	AuditLog        string         `json:"audit_log,omitempty"`
	AuditError      string         `json:"audit_error,omitempty"`
	ServeError      string         `json:"serve_error,omitempty"`
	NoFirewall      bool           `json:"no_firewall,omitempty"`
}

// Ban is one address the gateway locked out.
type Ban struct {
	Addr     string    `json:"addr"`
	Until    time.Time `json:"until"`
	Firewall bool      `json:"firewall"` // also dropped by the firewall
	Error    string    `json:"error,omitempty"`
}

// Status reports the gateway's state.
func (g *Gateway) Status() Status {
	s := g.cur.Load()
	st := Status{
		Enabled:      s.cfg.Enabled,
		Listen:       []string{},
		TLS:          s.tls != nil,
		Users:        s.users,
		Tokens:       s.tokens,
		Identities:   s.users + s.tokens,
		Requests:     g.requests.Load(),
		Denied:       g.denied.Load(),
		AuthFailures: g.authFailures.Load(),
		Connections:  g.conns.count(),
		Banned:       []Ban{},
		AuditLog:     s.cfg.AuditLog,
		NoFirewall:   g.banner == nil,
	}
	if s.upstream != nil {
		st.Upstream = s.upstream.String()
	}
	if r := g.limits.running(); len(r) > 0 {
		st.RunningPrompts = r
	}
	if err := g.audit.lastError(); err != nil {
		st.AuditError = err.Error()
	}
	now := g.now()
	g.mu.Lock()
	for a := range g.listeners {
		st.Listen = append(st.Listen, a)
	}
	for a, b := range g.bans {
		if now.Before(b.Until) {
			st.Banned = append(st.Banned, Ban{Addr: a.String(), Until: b.Until, Firewall: b.Firewall, Error: b.Err})
		}
	}
	st.CredentialError = g.credErr
	st.MissingFiles = slices.Clone(g.missing)
	st.ServeError = g.serveErr
	g.mu.Unlock()
	sort.Strings(st.Listen)
	sort.Slice(st.Banned, func(i, j int) bool { return st.Banned[i].Addr < st.Banned[j].Addr })
	return st
}
