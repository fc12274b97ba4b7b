package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"golang.org/x/crypto/bcrypt"

	"github.com/zguard/zguard/comfy/fakecomfy"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/gateway/credfile"
	"github.com/zguard/zguard/internal/testenv"
)

// startComfy runs the fake ComfyUI image in a container published on a
// random 127.0.0.1 port and returns its base URL. The container is removed
// when the test ends.
func startComfy(t *testing.T) string {
	t.Helper()
	testenv.Require(t, testenv.Docker)
	img := testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:gateway-test"})
	cli, err := testenv.DockerClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx := context.Background()
	name := testenv.UniqueName("zguard-gwtest-")
	resp, err := cli.ContainerCreate(ctx,
		&container.Config{Image: img, Cmd: []string{"-step-time", "20ms"}, ExposedPorts: nat.PortSet{"8188/tcp": {}}},
		&container.HostConfig{PortBindings: nat.PortMap{"8188/tcp": {{HostIP: "127.0.0.1", HostPort: "0"}}}},
		nil, nil, name)
	if err != nil {
		t.Fatalf("creating container: %v", err)
	}
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	})
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatalf("starting container: %v", err)
	}
	info, err := cli.ContainerInspect(ctx, resp.ID)
	if err != nil {
		t.Fatal(err)
	}
	b := info.NetworkSettings.Ports["8188/tcp"]
	if len(b) == 0 {
		t.Fatalf("container port not published: %+v", info.NetworkSettings.Ports)
	}
	base := "http://127.0.0.1:" + b[0].HostPort
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := http.Get(base + "/system_stats")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake ComfyUI at %s not ready: %v", base, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fakeBanner records bans instead of touching iptables (the real firewall
// ban is exercised in e2e/gateway_test.go).
type fakeBanner struct {
	mu   sync.Mutex
	bans []netip.Addr
	durs []time.Duration
}

func (b *fakeBanner) Ban(a netip.Addr, d time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bans = append(b.bans, a)
	b.durs = append(b.durs, d)
	return nil
}

func (b *fakeBanner) Unban(netip.Addr) error { return nil }

func (b *fakeBanner) banned() []netip.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]netip.Addr(nil), b.bans...)
}

// harness is a running gateway on 127.0.0.1 with its files in a temp dir.
type harness struct {
	t      *testing.T
	g      *Gateway
	cfg    config.Gateway
	dir    string
	base   string // http://127.0.0.1:port
	banner *fakeBanner
}

const (
	alicePW = "alice-long-password-1"
	bobPW   = "bob-long-password-22"
)

// newHarness starts a gateway in front of upstream (may be "" for tests
// that never get past authentication), with user alice (bcrypt cost) and
// the token of `ci` returned by h.token.
func newHarness(t *testing.T, upstream string, cost int, mutate func(*config.Gateway)) (*harness, string) {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, banner: &fakeBanner{}}
	hash, err := credfile.HashPassword(alicePW, cost)
	if err != nil {
		t.Fatal(err)
	}
	h.write("htpasswd", credfile.HtpasswdLine("alice", hash)+"\n")
	tok, _ := credfile.NewToken()
	h.write("tokens", credfile.TokenLine("ci", credfile.DigestToken(tok))+"\n")
	if upstream == "" {
		upstream = "http://127.0.0.1:9" // discard port: nothing listens
	}
	cfg := config.Defaults().Gateway
	cfg.Enabled = true
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Htpasswd = filepath.Join(dir, "htpasswd")
	cfg.Tokens = filepath.Join(dir, "tokens")
	cfg.AuditLog = filepath.Join(dir, "log", "audit.jsonl")
	cfg.Upstream = upstream
	cfg.Admins = []string{"root"}
	if mutate != nil {
		mutate(&cfg)
	}
	h.cfg = cfg
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.g = New(Deps{Log: log, Banner: h.banner})
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.g.Apply(ctx, cfg); err != nil {
		cancel()
		t.Fatalf("Apply: %v", err)
	}
	done := make(chan struct{})
	go func() { h.g.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h.base = "http://" + h.g.boundAddrs()[0]
	return h, tok
}

func (h *harness) write(name, content string) {
	h.t.Helper()
	if err := credfile.WriteAtomic(filepath.Join(h.dir, name), []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// boundAddrs returns the actual addresses of the gateway's listeners.
func (g *Gateway) boundAddrs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, l := range g.listeners {
		out = append(out, l.ln.Addr().String())
	}
	return out
}

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

// client returns an HTTP client whose connections come from the loopback
// address src (e.g. "127.0.0.2"), so tests can play several hosts.
func client(src string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: 64},
	}
}

// do sends a request through c and returns status, headers and body.
func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// rawGet sends target exactly as written (no client-side cleaning) on a
// fresh connection and returns the status code.
func rawGet(t *testing.T, hostport, target string, hdr map[string]string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", hostport, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", target, hostport)
	for k, v := range hdr {
		fmt.Fprintf(c, "%s: %s\r\n", k, v)
	}
	fmt.Fprintf(c, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// workflow is a minimal ComfyUI API-format workflow the fake accepts:
// steps sampler steps (20 ms each), an optional wait, and a SaveImage node.
func workflow(prefix string, steps int, wait float64) map[string]any {
	return map[string]any{
		"3": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"steps": steps, "seed": 1}},
		"5": map[string]any{"class_type": "FakeWait", "inputs": map[string]any{"seconds": wait}},
		"9": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": prefix, "images": []any{"3", 0}}},
	}
}

func promptBody(t *testing.T, wf map[string]any, clientID string, extra map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"prompt": wf, "client_id": clientID, "extra_data": extra})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fakeStats(t *testing.T, upstream string) fakecomfy.Stats {
	t.Helper()
	s, err := fakecomfy.ReadStats(upstream)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls cond every 50ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var _ = bcrypt.MinCost
