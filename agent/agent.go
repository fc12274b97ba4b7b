// Package agent is zguard's switchboard: it loads the config, builds every
// subsystem with its mechanisms injected, applies each config section,
// runs the subsystems' loops, reloads on SIGHUP or `zguard reload`
// (validate first, then swap; a bad file keeps the old config in force),
// serves status on the control socket and talks to systemd.
//
// Subsystems never import each other. What one needs from another is an
// interface the consumer declares and the agent satisfies here.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/health"
	"golang.org/x/sys/unix"
)

// Version is set at build time (-ldflags "-X github.com/zguard/zguard/agent.Version=...").
var Version = "0.1.0-dev"

// Options configure an Agent.
type Options struct {
	ConfigPath string
	Socket     string // overrides [agent] socket when set
	Log        *slog.Logger
	// LogLevel is shared with the logger's handler so the config can change it.
	LogLevel *slog.LevelVar
}

// subsystem is one line of the switchboard.
type subsystem struct {
	name string
	// section extracts this subsystem's part of the config, to tell whether
	// a reload changed it.
	section func(*config.Config) any
	apply   func(ctx context.Context, cfg *config.Config) (string, error)
	// everyReload applies the section on every reload, changed or not
	// (the gateway rereads its credential files and reopens its audit log,
	// for log rotation).
	everyReload bool
	run         func(ctx context.Context) error
	status      func() any
	finds       func() []health.Finding
}

// Agent runs zguard.
type Agent struct {
	opt  Options
	log  *slog.Logger
	subs []*subsystem
	// supervisorReady is closed after the first successful reconcile.
	ready <-chan struct{}

	mu          sync.Mutex
	cfg         *config.Config
	loadedAt    time.Time
	reloadErr   string
	reloadAt    time.Time
	applyErrors map[string]string
	reloads     chan reloadRequest
}

type reloadRequest struct {
	reply chan ReloadResult
}

// ReloadResult is what `zguard reload` prints.
type ReloadResult struct {
	OK       bool     `json:"ok"`
	Changes  []string `json:"changes"`
	Error    string   `json:"error,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	Took     string   `json:"took"`
}

// New loads and validates the config and builds every subsystem. It does
// not touch Docker, iptables or the filesystem yet: Run does.
func New(opt Options) (*Agent, error) {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	cfg, err := config.Load(opt.ConfigPath)
	if err != nil {
		return nil, err
	}
	a := &Agent{opt: opt, log: opt.Log, cfg: cfg, applyErrors: map[string]string{}, reloads: make(chan reloadRequest)}
	a.setLogLevel(cfg)
	a.wire()
	return a, nil
}

func (a *Agent) setLogLevel(cfg *config.Config) {
	if a.opt.LogLevel == nil {
		return
	}
	var l slog.Level
	_ = l.UnmarshalText([]byte(cfg.Agent.LogLevel))
	a.opt.LogLevel.Set(l)
}

// socketPath is the control socket in force.
func (a *Agent) socketPath() string {
	if a.opt.Socket != "" {
		return a.opt.Socket
	}
	return a.cfg.Agent.Socket
}

// Run applies the config and runs every subsystem until ctx ends or a
// termination signal arrives. SIGHUP reloads.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, w := range a.cfg.Warnings {
		a.log.Warn("config warning", "problem", w.String())
	}
	a.log.Info("zguard starting", "version", Version, "config", a.cfg.Path)
	ln, err := listenControl(a.socketPath())
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.loadedAt = time.Now()
	a.mu.Unlock()
	for _, s := range a.subs {
		if _, err := s.apply(ctx, a.cfg); err != nil {
			a.log.Error("applying config", "subsystem", s.name, "err", err)
			a.setApplyErr(s.name, err)
		}
	}
	var wg sync.WaitGroup
	for _, s := range a.subs {
		wg.Add(1)
		go func(s *subsystem) {
			defer wg.Done()
			if err := s.run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("subsystem stopped", "subsystem", s.name, "err", err)
				a.setApplyErr(s.name, err)
			}
		}(s)
	}
	srv := a.serveControl(ln)
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
		os.Remove(a.socketPath())
	}()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)

	var watchdog <-chan time.Time
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdog = t.C
	}
	ready := a.ready
	readyTimeout := time.After(5 * time.Minute)
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				res := a.reload(ctx)
				a.logReload(res)
				continue
			}
			a.log.Info("stopping", "signal", sig.String())
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			cancel()
			wg.Wait()
			a.log.Info("stopped; firewall rules and the container stay in place")
			return nil
		case req := <-a.reloads:
			res := a.reload(ctx)
			a.logReload(res)
			req.reply <- res
		case <-ready:
			ready = nil
			readyTimeout = nil
			a.log.Info("ready: first reconcile done")
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=running")
		case <-readyTimeout:
			// Docker may be down for long; systemd must not kill us for it.
			ready = nil
			a.log.Warn("container not converged after 5m; reporting ready anyway so status stays reachable")
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=degraded: container not converged")
		case <-watchdog:
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

func (a *Agent) setApplyErr(name string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.applyErrors, name)
	} else {
		a.applyErrors[name] = err.Error()
	}
}

func (a *Agent) logReload(res ReloadResult) {
	if res.OK {
		a.log.Info("config reloaded", "changes", strings.Join(res.Changes, "; "), "took", res.Took)
	} else {
		a.log.Error("config reload failed; old config stays in force", "err", res.Error)
	}
}

// Reload asks the running loop to reload, as SIGHUP does, and returns the result.
func (a *Agent) Reload(ctx context.Context) ReloadResult {
	req := reloadRequest{reply: make(chan ReloadResult, 1)}
	select {
	case a.reloads <- req:
	case <-ctx.Done():
		return ReloadResult{Error: ctx.Err().Error()}
	}
	select {
	case r := <-req.reply:
		return r
	case <-ctx.Done():
		return ReloadResult{Error: ctx.Err().Error()}
	}
}

// reload loads and validates the file, then applies each changed section.
// A file that fails to load changes nothing.
func (a *Agent) reload(ctx context.Context) ReloadResult {
	t0 := time.Now()
	_, _ = daemon.SdNotify(false, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
	defer daemon.SdNotify(false, daemon.SdNotifyReady)
	a.mu.Lock()
	path := a.cfg.Path
	old := a.cfg
	a.mu.Unlock()
	cfg, err := config.Load(path)
	if err != nil {
		a.mu.Lock()
		a.reloadErr = err.Error()
		a.reloadAt = time.Now()
		a.mu.Unlock()
		return ReloadResult{Error: err.Error(), Took: time.Since(t0).Round(time.Microsecond).String()}
	}
	if cfg.Agent.Socket != old.Agent.Socket && a.opt.Socket == "" {
		cfg.Agent.Socket = old.Agent.Socket
	}
	res := ReloadResult{OK: true}
	for _, w := range cfg.Warnings {
		res.Warnings = append(res.Warnings, w.String())
	}
	var errs []string
	for _, s := range a.subs {
		changed := !reflect.DeepEqual(s.section(old), s.section(cfg))
		if !changed && !s.everyReload {
			a.mu.Lock()
			_, hadErr := a.applyErrors[s.name]
			a.mu.Unlock()
			if !hadErr {
				continue
			}
		}
		msg, err := s.apply(ctx, cfg)
		a.setApplyErr(s.name, err)
		if err != nil {
			errs = append(errs, s.name+": "+err.Error())
			continue
		}
		if !changed {
			continue // reapplied for its files, not a config change
		}
		if msg == "" {
			msg = s.name + ": applied"
		}
		res.Changes = append(res.Changes, msg)
	}
	if len(res.Changes) == 0 && len(errs) == 0 {
		res.Changes = []string{"nothing changed"}
	}
	a.mu.Lock()
	a.cfg = cfg
	a.loadedAt = time.Now()
	a.reloadAt = a.loadedAt
	a.reloadErr = ""
	if len(errs) > 0 {
		a.reloadErr = strings.Join(errs, "; ")
		res.OK = false
		res.Error = "applied with errors (those sections keep their previous settings): " + a.reloadErr
	}
	a.mu.Unlock()
	a.setLogLevel(cfg)
	res.Took = time.Since(t0).Round(time.Microsecond).String()
	return res
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as systemd's
// RELOADING=1 notification wants it.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}
