package gateway

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestUpstreamTransport(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/big" {
			io.WriteString(w, strings.Repeat("x", 1<<20))
			return
		}
		io.WriteString(w, "hello "+r.Method)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	tr := newUpstreamTransport(&http.Transport{})
	defer tr.closeIdle()
	c := &http.Client{Transport: tr}
	get := func(method, path string) string {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for i := 0; i < 5; i++ {
		if got := get("GET", "/"); got != "hello GET" {
			t.Fatalf("body %q", got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 sequential GETs used %d connections, want 1 (keep-alive)", n)
	}
	srv.CloseClientConnections()
	if got := get("GET", "/"); got != "hello GET" {
		t.Fatalf("after the upstream closed the idle connection: %q", got)
	}
	get("GET", "/close")
	before := conns.Load()
	get("GET", "/")
	if conns.Load() != before+1 {
		t.Error("a connection the upstream marked Connection: close was reused")
	}
	if got := get("HEAD", "/"); got != "" {
		t.Errorf("HEAD body %q", got)
	}
	if got := get("POST", "/"); got != "hello POST" {
		t.Errorf("POST through the standard transport: %q", got)
	}
	// A body closed half-read leaves a usable pool.
	req, _ := http.NewRequest("GET", srv.URL+"/big", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 100))
	resp.Body.Close()
	if got := get("GET", "/"); got != "hello GET" {
		t.Fatalf("after a half-read body: %q", got)
	}
}
