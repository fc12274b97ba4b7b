// Package fakecomfy is a faithful stand-in for ComfyUI's HTTP API, used by
// tests, the demo and the benchmarks in place of the real (multi-gigabyte,
// GPU-bound) image. It keeps the parts zguard depends on: the routes and
// their /api/ aliases, the prompt queue with interrupt, the /ws message
// stream, /view with ComfyUI's traversal guards, and ComfyUI's rule that a
// loopback Host with a different Origin is refused (403).
//
// A "job" runs for a time taken from its workflow (inputs.steps × StepTime
// per node, plus inputs.seconds of FakeWait nodes) and then writes a PNG
// into the output directory, as a SaveImage node would.
package fakecomfy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Options configure a Server.
type Options struct {
	OutputDir string        // where finished jobs write their PNGs
	Version   string        // reported as comfyui_version
	StepTime  time.Duration // time one sampler step takes
	Unhealthy bool          // /system_stats answers 500
}

// Server is the fake ComfyUI. Create it with New and serve Handler().
type Server struct {
	opt Options

	mu        sync.Mutex
	number    int
	pending   []*job
	running   *job
	history   map[string]*job
	order     []string
	counter   int // SaveImage file counter
	wakeup    chan struct{}
	clients   map[*wsClient]bool
	stats     Stats
	interrupt chan struct{}
}

// Stats counts what the fake received; served at GET /fake/stats so tests
// can assert that a request really arrived.
type Stats struct {
	Interrupts int    `json:"interrupts"`
	Frees      int    `json:"frees"`
	Prompts    int    `json:"prompts"`
	Completed  int    `json:"completed"`
	Version    string `json:"version"`
}

// ReadStats fetches GET /fake/stats from a fake ComfyUI at baseURL.
func ReadStats(baseURL string) (Stats, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(strings.TrimRight(baseURL, "/") + "/fake/stats")
	if err != nil {
		return Stats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Stats{}, fmt.Errorf("GET /fake/stats: %s", resp.Status)
	}
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Stats{}, fmt.Errorf("decoding /fake/stats: %w", err)
	}
	return st, nil
}

type job struct {
	Number   int
	ID       string
	Prompt   map[string]any
	Extra    map[string]any
	Client   string
	duration time.Duration
	steps    int
	status   string // success | error | interrupted
	outputs  map[string]any
	messages [][2]any
}

type wsClient struct {
	id  string
	out chan []byte
}

// New returns a fake ComfyUI; call Run to start its worker.
func New(opt Options) *Server {
	if opt.StepTime == 0 {
		opt.StepTime = 50 * time.Millisecond
	}
	if opt.Version == "" {
		opt.Version = "0.3.fake"
	}
	return &Server{
		opt:       opt,
		history:   map[string]*job{},
		wakeup:    make(chan struct{}, 1),
		clients:   map[*wsClient]bool{},
		interrupt: make(chan struct{}, 1),
		stats:     Stats{Version: opt.Version},
	}
}

// Handler returns the HTTP handler with every route, also under /api/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	routes := map[string]http.HandlerFunc{
		"GET /system_stats":  s.systemStats,
		"GET /prompt":        s.promptInfo,
		"POST /prompt":       s.postPrompt,
		"GET /queue":         s.getQueue,
		"POST /queue":        s.postQueue,
		"POST /interrupt":    s.postInterrupt,
		"POST /free":         s.postFree,
		"GET /history":       s.getHistory,
		"GET /history/{id}":  s.getHistory,
		"POST /history":      s.postHistory,
		"GET /view":          s.view,
		"GET /ws":            s.ws,
		"GET /object_info":   s.objectInfo,
		"GET /embeddings":    func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []string{}) },
		"GET /extensions":    func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []string{}) },
		"POST /upload/image": s.uploadImage,
		"GET /fake/stats":    s.fakeStats,
		"GET /manager/reboot": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]string{"manager": "reboot"})
		},
		"POST /manager/queue/install": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]string{"manager": "install"})
		},
	}
	for pattern, h := range routes {
		method, path, _ := strings.Cut(pattern, " ")
		mux.HandleFunc(method+" "+path, h)
		mux.HandleFunc(method+" /api"+path, h)
	}
	mux.HandleFunc("GET /{$}", s.index)
	return originOnly(mux)
}

// originOnly reproduces ComfyUI's middleware: when the Host is a loopback
// address and the request carries an Origin whose host differs, refuse it.
func originOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && r.Host != "" {
			host := strings.ToLower(r.Host)
			o, err := url.Parse(origin)
			if err != nil || isLoopbackHost(host) && host != strings.ToLower(o.Host) {
				http.Error(w, "", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func isLoopbackHost(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!DOCTYPE html><html><head><title>ComfyUI</title></head><body><div id=\"comfy\">ComfyUI %s (fake)</div></body></html>\n", s.opt.Version)
}

func (s *Server) systemStats(w http.ResponseWriter, r *http.Request) {
	if s.opt.Unhealthy {
		http.Error(w, "unhealthy (fake)", http.StatusInternalServerError)
		return
	}
	writeJSON(w, 200, map[string]any{
		"system": map[string]any{
			"os": "posix", "comfyui_version": s.opt.Version, "python_version": "3.12.0 (fake)",
			"pytorch_version": "fake", "embedded_python": false, "argv": os.Args,
			"ram_total": 0, "ram_free": 0,
		},
		"devices": []map[string]any{{
			"name": "cpu", "type": "cpu", "index": nil,
			"vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0,
		}},
	})
}

func (s *Server) objectInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]any{
		"SaveImage": map[string]any{"input": map[string]any{"required": map[string]any{"filename_prefix": []any{"STRING"}}}, "output_node": true},
		"KSampler":  map[string]any{"input": map[string]any{"required": map[string]any{"steps": []any{"INT"}}}},
		"FakeWait":  map[string]any{"input": map[string]any{"required": map[string]any{"seconds": []any{"FLOAT"}}}},
	})
}

func (s *Server) fakeStats(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	writeJSON(w, 200, st)
}

func (s *Server) promptInfo(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	n := s.remainingLocked()
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"exec_info": map[string]any{"queue_remaining": n}})
}

func (s *Server) remainingLocked() int {
	n := len(s.pending)
	if s.running != nil {
		n++
	}
	return n
}

func (s *Server) postPrompt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Prompt    map[string]any `json:"prompt"`
		ClientID  string         `json:"client_id"`
		ExtraData map[string]any `json:"extra_data"`
		PromptID  string         `json:"prompt_id"`
		Front     bool           `json:"front"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20)).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"type": "invalid_prompt", "message": "invalid json: " + err.Error(), "details": "", "extra_info": map[string]any{}}, "node_errors": []any{}})
		return
	}
	if body.Prompt == nil {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": map[string]any{}}, "node_errors": []any{}})
		return
	}
	dur, steps, err := workflowDuration(body.Prompt, s.opt.StepTime)
	if err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"type": "prompt_no_outputs", "message": err.Error(), "details": "", "extra_info": map[string]any{}}, "node_errors": map[string]any{}})
		return
	}
	id := body.PromptID
	if id == "" {
		id = newUUID()
	}
	s.mu.Lock()
	s.number++
	j := &job{Number: s.number, ID: id, Prompt: body.Prompt, Extra: body.ExtraData, Client: body.ClientID, duration: dur, steps: steps}
	if body.Front {
		s.pending = append([]*job{j}, s.pending...)
	} else {
		s.pending = append(s.pending, j)
	}
	s.stats.Prompts++
	s.mu.Unlock()
	s.broadcastStatus()
	select {
	case s.wakeup <- struct{}{}:
	default:
	}
	writeJSON(w, 200, map[string]any{"prompt_id": id, "number": j.Number, "node_errors": map[string]any{}})
}

// workflowDuration reads how long a workflow "runs" and checks it has an
// output node, as ComfyUI refuses prompts without one.
func workflowDuration(prompt map[string]any, step time.Duration) (time.Duration, int, error) {
	var d time.Duration
	steps := 0
	hasOutput := false
	for _, n := range prompt {
		node, ok := n.(map[string]any)
		if !ok {
			return 0, 0, fmt.Errorf("invalid node")
		}
		class, _ := node["class_type"].(string)
		if class == "" {
			return 0, 0, fmt.Errorf("node has no class_type")
		}
		if class == "SaveImage" || class == "PreviewImage" {
			hasOutput = true
		}
		inputs, _ := node["inputs"].(map[string]any)
		if v, ok := inputs["steps"].(float64); ok && v > 0 && v <= 10000 {
			steps += int(v)
			d += time.Duration(v) * step
		}
		if class == "FakeWait" {
			if v, ok := inputs["seconds"].(float64); ok && v > 0 && v <= 3600 {
				d += time.Duration(v * float64(time.Second))
			}
		}
	}
	if !hasOutput {
		return 0, 0, fmt.Errorf("Prompt has no outputs")
	}
	return d, steps, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func queueEntry(j *job) []any {
	return []any{j.Number, j.ID, j.Prompt, j.Extra, []string{}}
}

func (s *Server) getQueue(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	running := []any{}
	if s.running != nil {
		running = append(running, queueEntry(s.running))
	}
	pending := []any{}
	for _, j := range s.pending {
		pending = append(pending, queueEntry(j))
	}
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"queue_running": running, "queue_pending": pending})
}

func (s *Server) postQueue(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Clear  bool     `json:"clear"`
		Delete []string `json:"delete"`
	}
	_ = json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body)
	s.mu.Lock()
	if body.Clear {
		s.pending = nil
	}
	if len(body.Delete) > 0 {
		del := map[string]bool{}
		for _, id := range body.Delete {
			del[id] = true
		}
		kept := s.pending[:0]
		for _, j := range s.pending {
			if !del[j.ID] {
				kept = append(kept, j)
			}
		}
		s.pending = kept
	}
	s.mu.Unlock()
	s.broadcastStatus()
	w.WriteHeader(200)
}

func (s *Server) postInterrupt(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.Interrupts++
	s.mu.Unlock()
	select {
	case s.interrupt <- struct{}{}:
	default:
	}
	w.WriteHeader(200)
}

func (s *Server) postFree(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.Frees++
	s.mu.Unlock()
	w.WriteHeader(200)
}

func (s *Server) historyEntry(j *job) map[string]any {
	return map[string]any{
		"prompt":  queueEntry(j),
		"outputs": j.outputs,
		"status": map[string]any{
			"status_str": j.status, "completed": j.status == "success", "messages": j.messages,
		},
		"meta": map[string]any{},
	}
}

func (s *Server) getHistory(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	max := -1
	if v := r.URL.Query().Get("max_items"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			max = n
		}
	}
	s.mu.Lock()
	out := map[string]any{}
	if id != "" {
		if j, ok := s.history[id]; ok {
			out[id] = s.historyEntry(j)
		}
	} else {
		ids := s.order
		if max >= 0 && len(ids) > max {
			ids = ids[len(ids)-max:]
		}
		for _, hid := range ids {
			out[hid] = s.historyEntry(s.history[hid])
		}
	}
	s.mu.Unlock()
	writeJSON(w, 200, out)
}

func (s *Server) postHistory(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Clear  bool     `json:"clear"`
		Delete []string `json:"delete"`
	}
	_ = json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body)
	s.mu.Lock()
	if body.Clear {
		s.history = map[string]*job{}
		s.order = nil
	}
	for _, id := range body.Delete {
		delete(s.history, id)
	}
	s.mu.Unlock()
	w.WriteHeader(200)
}

// view serves an output file with ComfyUI's guards: no absolute names, no
// "..", and the subfolder must stay inside the output directory.
func (s *Server) view(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	filename := q.Get("filename")
	if filename == "" {
		http.Error(w, "", http.StatusNotFound)
		return
	}
	if strings.HasPrefix(filename, "/") || strings.Contains(filename, "..") {
		http.Error(w, "", http.StatusBadRequest)
		return
	}
	typ := q.Get("type")
	if typ == "" {
		typ = "output"
	}
	if typ != "output" {
		http.Error(w, "", http.StatusBadRequest)
		return
	}
	dir, err := filepath.Abs(s.opt.OutputDir)
	if err != nil {
		http.Error(w, "", http.StatusInternalServerError)
		return
	}
	full := dir
	if sub := q.Get("subfolder"); sub != "" {
		full, _ = filepath.Abs(filepath.Join(dir, sub))
		if full != dir && !strings.HasPrefix(full, dir+string(filepath.Separator)) {
			http.Error(w, "", http.StatusForbidden)
			return
		}
	}
	file := filepath.Join(full, filepath.Base(filename))
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Disposition", fmt.Sprintf("filename=%q", filepath.Base(filename)))
	http.ServeFile(w, r, file)
}

func (s *Server) uploadImage(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(32 << 20); err != nil {
		http.Error(w, "", http.StatusBadRequest)
		return
	}
	f, hdr, err := r.FormFile("image")
	if err != nil {
		http.Error(w, "", http.StatusBadRequest)
		return
	}
	f.Close()
	writeJSON(w, 200, map[string]any{"name": filepath.Base(hdr.Filename), "subfolder": "", "type": "input"})
}

// ws streams status and execution messages, as ComfyUI's /ws does.
func (s *Server) ws(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = strings.ReplaceAll(newUUID(), "-", "")
	}
	cl := &wsClient{id: sid, out: make(chan []byte, 256)}
	s.mu.Lock()
	s.clients[cl] = true
	remaining := s.remainingLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, cl)
		s.mu.Unlock()
	}()
	ctx := c.CloseRead(r.Context())
	first, _ := json.Marshal(map[string]any{"type": "status", "data": map[string]any{"status": map[string]any{"exec_info": map[string]any{"queue_remaining": remaining}}, "sid": sid}})
	if err := c.Write(ctx, websocket.MessageText, first); err != nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-cl.out:
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Write(wctx, websocket.MessageText, m)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

// send delivers a message to one client id ("" = everyone).
func (s *Server) send(to, typ string, data map[string]any) {
	b, _ := json.Marshal(map[string]any{"type": typ, "data": data})
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		if to == "" || c.id == to {
			select {
			case c.out <- b:
			default: // slow client: drop, as a real server would eventually
			}
		}
	}
}

func (s *Server) broadcastStatus() {
	s.mu.Lock()
	n := s.remainingLocked()
	s.mu.Unlock()
	s.send("", "status", map[string]any{"status": map[string]any{"exec_info": map[string]any{"queue_remaining": n}}})
}

// Run executes queued jobs one at a time until ctx ends.
func (s *Server) Run(ctx context.Context) {
	for {
		s.mu.Lock()
		var j *job
		if len(s.pending) > 0 {
			j = s.pending[0]
			s.pending = s.pending[1:]
			s.running = j
		}
		s.mu.Unlock()
		if j == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.wakeup:
				continue
			}
		}
		// Drain an interrupt that arrived while nothing ran: ComfyUI's
		// interrupt flag only affects the job running at that time.
		select {
		case <-s.interrupt:
		default:
		}
		s.execute(ctx, j)
		s.mu.Lock()
		s.running = nil
		s.history[j.ID] = j
		s.order = append(s.order, j.ID)
		s.mu.Unlock()
		s.broadcastStatus()
	}
}

func (s *Server) execute(ctx context.Context, j *job) {
	now := func() int64 { return time.Now().UnixMilli() }
	s.send(j.Client, "execution_start", map[string]any{"prompt_id": j.ID, "timestamp": now()})
	j.messages = append(j.messages, [2]any{"execution_start", map[string]any{"prompt_id": j.ID, "timestamp": now()}})
	nodes := make([]string, 0, len(j.Prompt))
	for id := range j.Prompt {
		nodes = append(nodes, id)
	}
	sort.Strings(nodes)
	steps := j.steps
	if steps == 0 {
		steps = 1
	}
	tick := j.duration / time.Duration(steps)
	progressNode := ""
	for _, id := range nodes {
		progressNode = id
		s.send(j.Client, "executing", map[string]any{"node": id, "display_node": id, "prompt_id": j.ID})
	}
	for i := 1; i <= steps; i++ {
		select {
		case <-ctx.Done():
			return
		case <-s.interrupt:
			j.status = "error"
			data := map[string]any{"prompt_id": j.ID, "node_id": progressNode, "node_type": "KSampler", "executed": []string{}, "timestamp": now()}
			j.messages = append(j.messages, [2]any{"execution_interrupted", data})
			s.send(j.Client, "execution_interrupted", data)
			return
		case <-time.After(tick):
		}
		s.send(j.Client, "progress", map[string]any{"value": i, "max": steps, "prompt_id": j.ID, "node": progressNode})
	}
	outputs := map[string]any{}
	for _, id := range nodes {
		node, _ := j.Prompt[id].(map[string]any)
		if class, _ := node["class_type"].(string); class != "SaveImage" {
			continue
		}
		prefix := "ComfyUI"
		if in, ok := node["inputs"].(map[string]any); ok {
			if p, ok := in["filename_prefix"].(string); ok && p != "" && !strings.Contains(p, "..") {
				prefix = p
			}
		}
		name, sub, err := s.saveImage(prefix)
		if err != nil {
			j.status = "error"
			data := map[string]any{"prompt_id": j.ID, "node_id": id, "node_type": "SaveImage", "exception_message": err.Error(), "timestamp": now()}
			j.messages = append(j.messages, [2]any{"execution_error", data})
			s.send(j.Client, "execution_error", data)
			return
		}
		img := map[string]any{"filename": name, "subfolder": sub, "type": "output"}
		outputs[id] = map[string]any{"images": []any{img}}
		s.send(j.Client, "executed", map[string]any{"node": id, "display_node": id, "output": map[string]any{"images": []any{img}}, "prompt_id": j.ID})
	}
	j.outputs = outputs
	j.status = "success"
	s.send(j.Client, "executing", map[string]any{"node": nil, "prompt_id": j.ID})
	s.send(j.Client, "execution_success", map[string]any{"prompt_id": j.ID, "timestamp": now()})
	j.messages = append(j.messages, [2]any{"execution_success", map[string]any{"prompt_id": j.ID, "timestamp": now()}})
	s.mu.Lock()
	s.stats.Completed++
	s.mu.Unlock()
}

// saveImage writes a small PNG named like ComfyUI's SaveImage does.
func (s *Server) saveImage(prefix string) (name, subfolder string, err error) {
	sub, base := filepath.Split(prefix)
	dir := filepath.Join(s.opt.OutputDir, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	var n int
	for {
		s.mu.Lock()
		s.counter++
		n = s.counter
		s.mu.Unlock()
		name = fmt.Sprintf("%s_%05d_.png", base, n)
		if _, err := os.Lstat(filepath.Join(dir, name)); os.IsNotExist(err) {
			break
		}
	}
	img := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for x := 0; x < 16; x++ {
		for y := 0; y < 16; y++ {
			img.Set(x, y, color.RGBA{uint8(x * 16), uint8(y * 16), uint8(n), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		return "", "", err
	}
	return name, strings.TrimSuffix(sub, "/"), nil
}
