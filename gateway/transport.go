package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// upstreamTransport carries the bulk of a ComfyUI page load (GET and HEAD
// without a body: the UI's scripts, /view, /history, /queue) over pooled
// keep-alive connections with one goroutine per request: the request is
// written and the response read by the caller itself. http.Transport hands
// each request to two connection goroutines and back, which on a loaded
// two-core box costs a third of the throughput. Everything else (requests
// with a body, WebSocket upgrades, https upstreams) goes to the standard
// transport, which handles Expect, retries and upgrades.
type upstreamTransport struct {
	std         *http.Transport
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	idleTimeout time.Duration
	maxIdle     int

	mu   sync.Mutex
	idle map[string][]*upConn // by host:port, most recent last
}

type upConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	host string
	used time.Time
}

func newUpstreamTransport(std *http.Transport) *upstreamTransport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &upstreamTransport{std: std, dial: d.DialContext, idleTimeout: 30 * time.Second, maxIdle: 256, idle: map[string][]*upConn{}}
}

func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" || (req.Method != http.MethodGet && req.Method != http.MethodHead) ||
		(req.Body != nil && req.Body != http.NoBody) || req.ContentLength > 0 ||
		req.Header.Get("Upgrade") != "" || req.Header.Get("Expect") != "" {
		return t.std.RoundTrip(req)
	}
	host := req.URL.Host
	if !strings.Contains(host, ":") {
		host += ":80"
	}
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.get(req.Context(), host)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		// A pooled connection the upstream closed while idle fails on first
		// use; a bodiless GET is safe to send again on a fresh one.
		if !reused || attempt > 0 || req.Context().Err() != nil {
			return nil, err
		}
	}
}

// exchange writes req on pc and reads the response head; the body returns
// pc to the pool once read to the end.
func (t *upstreamTransport) exchange(pc *upConn, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(req.Context(), func() { pc.c.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.c.Close()
		return nil, err
	}
	if err := req.Write(pc.bw); err != nil {
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		return fail(err)
	}
	var resp *http.Response
	for {
		r, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return fail(err)
		}
		if r.StatusCode >= 200 || r.StatusCode == http.StatusSwitchingProtocols {
			resp = r
			break
		}
		r.Body.Close() // 1xx interim answers have no body
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		return fail(errors.New("upstream switched protocols on a request without Upgrade"))
	}
	reuse := !resp.Close
	resp.Body = &pooledBody{rc: resp.Body, done: func(clean bool) {
		alive := stop() // false: the request context ended and closed the conn
		if clean && reuse && alive {
			t.put(pc)
		} else {
			pc.c.Close()
		}
	}}
	return resp, nil
}

func (t *upstreamTransport) get(ctx context.Context, host string) (*upConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for list := t.idle[host]; len(list) > 0; list = t.idle[host] {
		pc := list[len(list)-1]
		t.idle[host] = list[:len(list)-1]
		if now.Sub(pc.used) < t.idleTimeout {
			t.mu.Unlock()
			return pc, true, nil
		}
		pc.c.Close()
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, "tcp", host)
	if err != nil {
		return nil, false, err
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10), host: host}, false, nil
}

func (t *upstreamTransport) put(pc *upConn) {
	pc.used = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.idle[pc.host]) >= t.maxIdle {
		pc.c.Close()
		return
	}
	t.idle[pc.host] = append(t.idle[pc.host], pc)
}

// closeIdle closes every pooled connection.
func (t *upstreamTransport) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for h, list := range t.idle {
		for _, pc := range list {
			pc.c.Close()
		}
		delete(t.idle, h)
	}
	t.std.CloseIdleConnections()
}

// pooledBody reports once whether the body was read to its end.
type pooledBody struct {
	rc   io.ReadCloser
	done func(clean bool)
	once sync.Once
}

func (b *pooledBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.once.Do(func() { b.done(true) })
	} else if err != nil {
		b.once.Do(func() { b.done(false) })
	}
	return n, err
}

func (b *pooledBody) Close() error {
	err := b.rc.Close() // drains what is left (bounded by the upstream's answer)
	b.once.Do(func() { b.done(err == nil) })
	return err
}
