package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// reqState travels with a request from ServeHTTP into the proxy hooks.
type reqState struct {
	settings *settings
	canon    canonical
	identity string
	prompt   bool // a POST /prompt holding a reserved slot
	settled  bool // the reservation was turned into an id or released
	promptID string
}

type stateKey struct{}

func (g *Gateway) newProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:        g.rewrite,
		Transport:      g.upstream,
		ModifyResponse: g.modifyResponse,
		ErrorHandler:   g.proxyError,
		ErrorLog:       nil,
		BufferPool:     bufferPool{},
	}
}

// rewrite points the request at ComfyUI. Host becomes the upstream's
// (ComfyUI refuses a loopback Host with a foreign Origin), and an Origin the
// gateway already checked is replaced by the upstream's own origin for the
// same reason. Credentials never reach ComfyUI.
func (g *Gateway) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*reqState)
	up := st.settings.upstream
	pr.Out.URL.Scheme = up.Scheme
	pr.Out.URL.Host = up.Host
	pr.Out.URL.Path = strings.TrimSuffix(up.Path, "/") + st.canon.Decoded
	pr.Out.URL.RawPath = strings.TrimSuffix(up.EscapedPath(), "/") + st.canon.Raw
	pr.Out.Host = ""
	pr.SetXForwarded()
	pr.Out.Header.Del("Authorization")
	pr.Out.Header.Del("Proxy-Authorization")
	if pr.Out.Header.Get("Origin") != "" {
		pr.Out.Header.Set("Origin", st.settings.upstreamOrigin)
	}
}

// modifyResponse learns the prompt id of an accepted POST /prompt.
func (g *Gateway) modifyResponse(resp *http.Response) error {
	st, _ := resp.Request.Context().Value(stateKey{}).(*reqState)
	if st == nil || !st.prompt {
		return nil
	}
	st.settled = true
	if resp.StatusCode != http.StatusOK {
		g.limits.releaseReservation(st.identity)
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		g.limits.releaseReservation(st.identity)
		return fmt.Errorf("reading /prompt response: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var out struct {
		PromptID string `json:"prompt_id"`
	}
	if json.Unmarshal(body, &out) != nil || out.PromptID == "" {
		g.limits.releaseReservation(st.identity)
		return nil
	}
	st.promptID = out.PromptID
	g.limits.promptStarted(st.identity, out.PromptID, g.now())
	return nil
}

func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(stateKey{}).(*reqState)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
	case errors.Is(err, context.Canceled):
		w.WriteHeader(499) // client went away; nobody reads this
	default:
		g.log.Warn("forwarding to ComfyUI", "path", r.URL.Path, "err", err)
		http.Error(w, "ComfyUI is not reachable", http.StatusBadGateway)
	}
	if st != nil && st.prompt && !st.settled {
		st.settled = true
		g.limits.releaseReservation(st.identity)
	}
}

// ServeHTTP is the gateway's whole policy, in order: banned source, path
// normalisation, Origin check, authentication (failures feed the lockout),
// block_paths, body size, prompt limits; then the request goes to ComfyUI.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s := g.cur.Load()
	g.requests.Add(1)
	rw := &recorder{ResponseWriter: w}
	addr := parseRemote(r.RemoteAddr)
	rec := &auditRecord{Time: g.now(), Remote: addr.String(), Method: r.Method, Path: r.URL.EscapedPath(), Query: redactQuery(r.URL.RawQuery)}
	defer func() {
		rec.Status = rw.code()
		rec.Bytes = rw.n
		rec.DurationMS = float64(time.Since(start).Microseconds()) / 1000
		if rec.Reason != "" {
			g.denied.Add(1)
		}
		g.audit.write(rec)
	}()
	deny := func(code int, reason string) {
		rec.Reason = reason
		if code == http.StatusUnauthorized {
			rw.Header().Set("WWW-Authenticate", `Basic realm="ComfyUI (zguard)", charset="UTF-8"`)
		}
		http.Error(rw, http.StatusText(code), code)
	}
	if !s.cfg.Enabled {
		deny(http.StatusServiceUnavailable, "gateway disabled")
		return
	}
	if g.banned(addr, g.now()) {
		rw.Header().Set("Connection", "close")
		deny(http.StatusForbidden, "banned")
		return
	}
	canon, err := normalizePath(r.URL.EscapedPath())
	if err != nil {
		deny(http.StatusBadRequest, "malformed path")
		return
	}
	rec.Path = canon.Raw
	if stateChanging(r.Method, canon.Route) {
		self := "http://" + r.Host
		if r.TLS != nil {
			self = "https://" + r.Host
		}
		if v := checkOrigin(r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site"), self, s.cfg.AllowedOrigins); !v.ok {
			deny(http.StatusForbidden, "origin: "+v.reason)
			return
		}
	}

	header := r.Header.Get("Authorization")
	if header == "" {
		deny(http.StatusUnauthorized, "no credentials")
		return
	}
	creds := g.creds.Load()
	ident, isToken, res := g.auth.check(r.Context(), creds, header)
	switch res {
	case authNone:
		deny(http.StatusUnauthorized, "unsupported authorization scheme")
		return
	case authOverload:
		deny(http.StatusServiceUnavailable, "authentication overloaded")
		return
	case authFailed:
		conn, _ := r.Context().Value(connKey{}).(net.Conn)
		if g.loginFailed(s, addr, conn) {
			rw.Header().Set("Connection", "close")
			deny(http.StatusForbidden, "bad credentials; address banned")
			return
		}
		deny(http.StatusUnauthorized, "bad credentials")
		return
	}
	rec.Identity = ident
	rec.Auth = "basic"
	if isToken {
		rec.Auth = "bearer"
	}
	if blocked(s.cfg.BlockPaths, canon) && !s.admins[ident] {
		deny(http.StatusForbidden, "blocked path")
		return
	}
	if max := int64(s.cfg.MaxBody); max > 0 {
		if r.ContentLength > max {
			deny(http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(rw, r.Body, max)
		}
	}
	st := &reqState{settings: s, canon: canon, identity: ident}
	if r.Method == http.MethodPost && canon.Route == "/prompt" {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				deny(http.StatusRequestEntityTooLarge, "body too large")
			} else {
				deny(http.StatusBadRequest, "reading body")
			}
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rec.Workflow = workflowDigest(body)
		if g.limits.atLimit(ident) {
			// The tracked prompts may have finished since the last poll.
			_ = g.refreshPrompts(r.Context())
		}
		if v := g.limits.reserve(ident, g.now()); !v.ok {
			rw.Header().Set("Retry-After", strconv.Itoa(retryAfter(v.retry)))
			deny(http.StatusTooManyRequests, v.reason)
			return
		}
		st.prompt = true
	}
	g.proxy.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
	if st.prompt && !st.settled {
		g.limits.releaseReservation(ident)
	}
	rec.PromptID = st.promptID
}

// workflowDigest is the SHA-256 of the compacted "prompt" member of a
// /prompt body: it identifies the workflow without storing it, and leaves
// extra_data (where API keys travel) out entirely.
func workflowDigest(body []byte) string {
	var in struct {
		Prompt json.RawMessage `json:"prompt"`
	}
	if json.Unmarshal(body, &in) != nil || len(in.Prompt) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, in.Prompt) != nil {
		return ""
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:])
}

// refreshPrompts reads ComfyUI's queue and forgets tracked prompts that are
// neither running nor pending. The queue (rather than /history) also
// frees slots of prompts that were deleted before they ran, which never
// appear in the history.
func (g *Gateway) refreshPrompts(ctx context.Context) error {
	s := g.cur.Load()
	if s.upstream == nil {
		return nil
	}
	since := g.now()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.upstream.JoinPath("queue").String(), nil)
	if err != nil {
		return err
	}
	resp, err := g.transport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("reading ComfyUI queue: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reading ComfyUI queue: status %s", resp.Status)
	}
	active, err := parseQueue(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return err
	}
	g.limits.settle(active, since)
	return nil
}

// parseQueue extracts the prompt ids from ComfyUI's GET /queue answer:
// {"queue_running": [[number, id, prompt, extra, outputs], ...], "queue_pending": [...]}.
func parseQueue(r io.Reader) (map[string]bool, error) {
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := json.NewDecoder(r).Decode(&q); err != nil {
		return nil, fmt.Errorf("decoding ComfyUI queue: %w", err)
	}
	active := map[string]bool{}
	for _, item := range append(q.Running, q.Pending...) {
		if len(item) < 2 {
			continue
		}
		var id string
		if json.Unmarshal(item[1], &id) == nil {
			active[id] = true
		}
	}
	return active, nil
}

// parseRemote reads the client address from http.Request.RemoteAddr.
func parseRemote(s string) netip.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// recorder notes status and size for the audit log. It passes Hijack
// through (for /ws) and exposes the wrapped writer for flushing.
type recorder struct {
	http.ResponseWriter
	status   int
	n        int64
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.hijacked = true
	}
	return c, brw, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) code() int {
	switch {
	case r.hijacked && r.status == 0:
		return http.StatusSwitchingProtocols
	case r.status == 0:
		return http.StatusOK
	}
	return r.status
}

// bufferPool gives the proxy 32 KiB copy buffers from a free list.
type bufferPool struct{}

var copyBufs = make(chan []byte, 256)

func (bufferPool) Get() []byte {
	select {
	case b := <-copyBufs:
		return b
	default:
		return make([]byte, 32<<10)
	}
}

func (bufferPool) Put(b []byte) {
	select {
	case copyBufs <- b:
	default:
	}
}
