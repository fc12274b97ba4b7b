// Package comfy is a small client for the ComfyUI HTTP API: just what
// zguard needs to interrupt runaway jobs, read the queue and probe health.
// Its sub-package fakecomfy is the stand-in server used by tests and the demo.
package comfy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client talks to one ComfyUI instance, normally on loopback.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for baseURL, e.g. "http://127.0.0.1:8188".
func NewClient(baseURL string) *Client {
	return &Client{base: strings.TrimRight(baseURL, "/"), http: &http.Client{Timeout: 10 * time.Second}}
}

// BaseURL is the ComfyUI address this client talks to.
func (c *Client) BaseURL() string { return c.base }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling ComfyUI %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("calling ComfyUI %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding ComfyUI %s answer: %w", path, err)
		}
	}
	return nil
}

// Interrupt asks ComfyUI to stop the running job (cooperative: it takes
// effect between nodes or sampler steps).
func (c *Client) Interrupt(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/interrupt", map[string]any{}, nil)
}

// ClearQueue drops every pending (not yet running) job.
func (c *Client) ClearQueue(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/queue", map[string]any{"clear": true}, nil)
}

// Free asks ComfyUI to unload models and free memory; ComfyUI defers it
// until the running prompt ends.
func (c *Client) Free(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/free", map[string]any{"unload_models": true, "free_memory": true}, nil)
}

// Queue is ComfyUI's GET /queue answer, reduced to prompt ids.
type Queue struct {
	Running []string
	Pending []string
}

// GetQueue reads the running and pending prompt ids.
func (c *Client) GetQueue(ctx context.Context) (Queue, error) {
	var raw struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := c.do(ctx, http.MethodGet, "/queue", nil, &raw); err != nil {
		return Queue{}, err
	}
	ids := func(entries [][]json.RawMessage) []string {
		out := []string{}
		for _, e := range entries {
			var id string
			if len(e) > 1 && json.Unmarshal(e[1], &id) == nil {
				out = append(out, id)
			}
		}
		return out
	}
	return Queue{Running: ids(raw.Running), Pending: ids(raw.Pending)}, nil
}

// RunningPrompts lists the ids of the prompts ComfyUI is executing now.
func (c *Client) RunningPrompts(ctx context.Context) ([]string, error) {
	q, err := c.GetQueue(ctx)
	return q.Running, err
}

// SystemStats returns ComfyUI's /system_stats document.
func (c *Client) SystemStats(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	err := c.do(ctx, http.MethodGet, "/system_stats", nil, &out)
	return out, err
}

// Prompt queues a workflow (API format) and returns its prompt id.
func (c *Client) Prompt(ctx context.Context, workflow map[string]any) (string, error) {
	var out struct {
		PromptID string `json:"prompt_id"`
	}
	if err := c.do(ctx, http.MethodPost, "/prompt", map[string]any{"prompt": workflow}, &out); err != nil {
		return "", err
	}
	return out.PromptID, nil
}

// HistoryEntry is the part of a /history entry zguard reads.
type HistoryEntry struct {
	Status struct {
		StatusStr string `json:"status_str"`
		Completed bool   `json:"completed"`
	} `json:"status"`
	Outputs map[string]struct {
		Images []struct {
			Filename  string `json:"filename"`
			Subfolder string `json:"subfolder"`
			Type      string `json:"type"`
		} `json:"images"`
	} `json:"outputs"`
}

// History returns the history entry of one prompt; ok is false while it has none.
func (c *Client) History(ctx context.Context, promptID string) (entry HistoryEntry, ok bool, err error) {
	var out map[string]HistoryEntry
	if err := c.do(ctx, http.MethodGet, "/history/"+promptID, nil, &out); err != nil {
		return HistoryEntry{}, false, err
	}
	entry, ok = out[promptID]
	return entry, ok, nil
}

// Workflow returns a minimal API-format workflow that "runs" for steps
// sampler steps and saves one image with the given filename prefix.
func Workflow(steps int, prefix string) map[string]any {
	return map[string]any{
		"3": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"steps": steps, "seed": 1, "cfg": 1.0}},
		"9": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": prefix, "images": []any{"3", 0}}},
	}
}
