package fakecomfy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/zguard/zguard/comfy"
)

func start(t *testing.T, opt Options) (*httptest.Server, *comfy.Client) {
	t.Helper()
	if opt.OutputDir == "" {
		opt.OutputDir = t.TempDir()
	}
	s := New(opt)
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { cancel(); ts.Close() })
	return ts, comfy.NewClient(ts.URL)
}

func waitHistory(t *testing.T, c *comfy.Client, id string) comfy.HistoryEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		e, ok, err := c.History(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return e
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("prompt %s never reached history", id)
	return comfy.HistoryEntry{}
}

func TestPromptRunsWritesPNGAndServesIt(t *testing.T) {
	out := t.TempDir()
	ts, c := start(t, Options{OutputDir: out, StepTime: time.Millisecond})
	ctx := context.Background()
	id, err := c.Prompt(ctx, comfy.Workflow(5, "zg"))
	if err != nil {
		t.Fatal(err)
	}
	e := waitHistory(t, c, id)
	if e.Status.StatusStr != "success" || len(e.Outputs["9"].Images) != 1 {
		t.Fatalf("history = %+v", e)
	}
	name := e.Outputs["9"].Images[0].Filename
	if name != "zg_00001_.png" {
		t.Fatalf("filename = %q", name)
	}
	if _, err := os.Stat(filepath.Join(out, name)); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/view", "/api/view"} {
		resp, err := http.Get(ts.URL + path + "?filename=" + name + "&type=output")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
			t.Fatalf("%s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
		}
	}
}

func TestViewTraversalGuards(t *testing.T) {
	ts, _ := start(t, Options{})
	cases := map[string]int{
		"filename=../etc/passwd":              400,
		"filename=%2Fetc%2Fpasswd":            400,
		"filename=passwd&subfolder=../../etc": 403,
		"filename=nothere.png":                404,
		"filename=x.png&type=temp":            400,
	}
	for q, want := range cases {
		resp, err := http.Get(ts.URL + "/view?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: got %d, want %d", q, resp.StatusCode, want)
		}
	}
}

func TestLoopbackHostWithForeignOriginIsRefused(t *testing.T) {
	ts, _ := start(t, Options{})
	host := strings.TrimPrefix(ts.URL, "http://")
	cases := map[string]struct {
		origin string
		want   int
	}{
		"no origin":      {"", 200},
		"same origin":    {"http://" + host, 200},
		"foreign origin": {"http://evil.example", 403},
		"other port":     {"http://127.0.0.1:1", 403},
	}
	for name, tc := range cases {
		req, _ := http.NewRequest("GET", ts.URL+"/system_stats", nil)
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: got %d, want %d", name, resp.StatusCode, tc.want)
		}
	}
}

func TestInterruptStopsRunningJobAndWSReportsProgress(t *testing.T) {
	ts, c := start(t, Options{StepTime: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(ts.URL, "http", "ws", 1)+"/ws?clientId=abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	var first struct{ Type string }
	_, b, err := ws.Read(ctx)
	if err != nil || json.Unmarshal(b, &first) != nil || first.Type != "status" {
		t.Fatalf("first message %s, %v", b, err)
	}
	body := `{"client_id":"abc","prompt":{"3":{"class_type":"KSampler","inputs":{"steps":1000}},"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"x"}}}}`
	resp, err := http.Post(ts.URL+"/prompt", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		PromptID string `json:"prompt_id"`
	}
	json.NewDecoder(resp.Body).Decode(&pr)
	resp.Body.Close()
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m struct{ Type string }
		json.Unmarshal(b, &m)
		if m.Type == "progress" {
			break
		}
	}
	running, err := c.RunningPrompts(ctx)
	if err != nil || len(running) != 1 || running[0] != pr.PromptID {
		t.Fatalf("running = %v, %v", running, err)
	}
	if err := c.Interrupt(ctx); err != nil {
		t.Fatal(err)
	}
	e := waitHistory(t, c, pr.PromptID)
	if e.Status.StatusStr != "error" {
		t.Fatalf("interrupted job status = %q", e.Status.StatusStr)
	}
}

func TestBadPromptsAre400(t *testing.T) {
	ts, _ := start(t, Options{})
	for _, body := range []string{`{`, `{}`, `{"prompt":{"1":{"class_type":"KSampler","inputs":{}}}}`, `{"prompt":{"1":"x"}}`} {
		resp, err := http.Post(ts.URL+"/api/prompt", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%s: got %d, want 400", body, resp.StatusCode)
		}
	}
}
