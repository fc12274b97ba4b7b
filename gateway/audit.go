package gateway

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// auditRecord is one line of the audit log. It never holds a secret: no
// headers, no request bodies, no query values that look like credentials.
type auditRecord struct {
	Time       time.Time `json:"time"`
	Remote     string    `json:"remote"`
	Identity   string    `json:"identity,omitempty"`
	Auth       string    `json:"auth,omitempty"` // basic | bearer
	Method     string    `json:"method"`
	Path       string    `json:"path"`
	Query      string    `json:"query,omitempty"`
	Status     int       `json:"status"`
	Bytes      int64     `json:"bytes"`
	DurationMS float64   `json:"duration_ms"`
	PromptID   string    `json:"prompt_id,omitempty"`
	Workflow   string    `json:"workflow_sha256,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// auditLog writes JSON lines through a buffer that Run flushes every
// second; reopen swaps the file for rotation (logrotate moves the old one,
// then `zguard reload`).
type auditLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
	w    *bufio.Writer
	err  error  // last write error, shown in status
	buf  []byte // line being encoded, reused
}

// openAudit opens path for appending, creating its directory (0750) and
// the file (0600): the log holds addresses and identities.
func openAudit(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("creating audit log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	return f, nil
}

// swap installs f (may be nil: no audit log) as the output, flushing and
// closing the previous file.
func (a *auditLog) swap(path string, f *os.File) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closeLocked()
	a.path, a.f, a.err = path, f, nil
	if f != nil {
		a.w = bufio.NewWriterSize(f, 64<<10)
	}
}

func (a *auditLog) closeLocked() {
	if a.w != nil {
		_ = a.w.Flush()
	}
	if a.f != nil {
		_ = a.f.Close()
	}
	a.f, a.w = nil, nil
}

func (a *auditLog) write(r *auditRecord) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.w == nil {
		return
	}
	a.buf = append(r.appendJSON(a.buf[:0]), '\n')
	if _, err := a.w.Write(a.buf); err != nil {
		a.err = err
	}
}

func (a *auditLog) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.w != nil {
		if err := a.w.Flush(); err != nil {
			a.err = err
		}
	}
}

func (a *auditLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closeLocked()
}

func (a *auditLog) lastError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}
