package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// listenControl opens the control socket with mode 0600. A socket file left
// by a crashed agent is replaced; one that answers means another agent is
// running, which is an error.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another zguard agent is already serving %s", path)
	}
	_ = os.Remove(path)
	// No window in which the socket exists with looser permissions.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("securing control socket: %w", err)
	}
	return ln, nil
}

// serveControl serves the one route table of the control API.
func (a *Agent) serveControl(ln net.Listener) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Snapshot())
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		res := a.Reload(ctx)
		code := http.StatusOK
		if !res.OK {
			code = http.StatusUnprocessableEntity
		}
		writeJSON(w, code, res)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("control socket stopped", "err", err)
		}
	}()
	return srv
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Client talks to a running agent over its control socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{http: &http.Client{Transport: tr, Timeout: 3 * time.Minute}}
}

// ErrUnreachable means no agent answered on the socket.
var ErrUnreachable = errors.New("agent unreachable")

func (c *Client) call(ctx context.Context, method, path string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://zguard"+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.StatusCode, fmt.Errorf("decoding agent answer (%s): %w", resp.Status, err)
	}
	return resp.StatusCode, nil
}

// Status fetches the status document.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	_, err := c.call(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

// Reload asks the agent to reload its config file.
func (c *Client) Reload(ctx context.Context) (ReloadResult, error) {
	var r ReloadResult
	_, err := c.call(ctx, http.MethodPost, "/v1/reload", &r)
	return r, err
}
