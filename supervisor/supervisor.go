// Package supervisor keeps the one ComfyUI container zguard owns running
// the configured image, with every port published on loopback only.
//
// It pulls before it replaces, adopts a container whose spec hash matches,
// restarts the container itself with exponential backoff (no Docker restart
// policy), detects crash loops, repairs drift, updates to new image digests
// behind a health gate with rollback, and survives dockerd restarts. Docker
// events drive it; a periodic reconcile is the safety net for lost events.
// It never touches a container without the zguard.managed label.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/zguard/zguard/config"
)

// Deps are the supervisor's mechanisms; nil fields get real defaults.
type Deps struct {
	Log    *slog.Logger
	Now    func() time.Time
	Docker dockerAPI // nil: connect from the environment
	// OnDaemonEvent is told about Docker events other subsystems care about:
	// "connected" (dockerd (re)connected), "network" (a network was created
	// or a container connected). The firewall re-asserts its rules on them.
	OnDaemonEvent func(kind string)
	// HealthProbe checks a health URL; nil: an HTTP GET expecting 2xx.
	HealthProbe func(ctx context.Context, url string) error
}

// Supervisor owns the managed container. Create it with New, configure it
// with Apply, then Run it.
type Supervisor struct {
	log    *slog.Logger
	now    func() time.Time
	docker dockerAPI
	notify func(string)
	probe  func(ctx context.Context, url string) error

	nudge chan struct{}
	ready chan struct{}
	once  sync.Once

	mu     sync.Mutex
	cfg    *config.Container // desired; nil until the first Apply
	st     Status
	exits  []Exit
	delays []time.Duration
	// restartAt is when the exited container is due to be started again.
	restartAt time.Time
	// accepted is the image ID the container should run: the one that
	// passed its health gate. Recreating for drift reuses it so a bad
	// digest left behind by a rollback is never started by accident.
	accepted string
	// badImage is an image ID that failed its health gate; updates skip it.
	badImage string
	// nextCheck is when the next update check is due.
	nextCheck time.Time
	// lastExitSeen is the FinishedAt of the last exit already counted.
	lastExitSeen time.Time
}

// New returns a supervisor; call Apply before Run.
func New(d Deps) *Supervisor {
	s := &Supervisor{
		log:    d.Log,
		now:    d.Now,
		docker: d.Docker,
		notify: d.OnDaemonEvent,
		probe:  d.HealthProbe,
		nudge:  make(chan struct{}, 1),
		ready:  make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.notify == nil {
		s.notify = func(string) {}
	}
	if s.probe == nil {
		s.probe = httpProbe
	}
	s.st.State = StateMissing
	s.st.Docker = "connecting"
	return s
}

// Apply sets the desired container. It never blocks on Docker: the change
// is carried out by Run's next reconcile (a changed spec recreates the
// container, pulling first; an unchanged one is left alone). It returns a
// one-line summary of what will change.
func (s *Supervisor) Apply(ctx context.Context, c config.Container) (string, error) {
	if _, err := buildSpec(c, c.Image, nil); err != nil {
		return "", err
	}
	s.mu.Lock()
	old := s.cfg
	cc := c
	s.cfg = &cc
	if old == nil || old.Image != c.Image {
		s.accepted = ""
		s.badImage = ""
	}
	if old == nil || old.UpdateInterval != c.UpdateInterval {
		s.nextCheck = time.Time{}
	}
	s.st.Name = c.Name
	s.st.Image = c.Image
	s.mu.Unlock()
	s.poke()
	switch {
	case old == nil:
		return "container: configured", nil
	case old.Name != c.Name:
		return fmt.Sprintf("container: renamed %s -> %s (old container left in place, new one created)", old.Name, c.Name), nil
	case specHash(*old) != specHash(c):
		return "container: spec changed, recreating", nil
	}
	return "container: unchanged", nil
}

// Ready is closed after the first successful reconcile (systemd READY=1).
func (s *Supervisor) Ready() <-chan struct{} { return s.ready }

// ContainerID is the full ID of the managed container, "" when there is none.
func (s *Supervisor) ContainerID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.ID
}

// EngineVersion is dockerd's version, "" until connected.
func (s *Supervisor) EngineVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.DockerVersion
}

// PublishedPorts lists the host ports the container is configured to publish.
func (s *Supervisor) PublishedPorts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg == nil {
		return nil
	}
	out := make([]int, 0, len(s.cfg.Ports))
	for _, p := range s.cfg.Ports {
		out = append(out, p.Host)
	}
	return out
}

func (s *Supervisor) poke() {
	select {
	case s.nudge <- struct{}{}:
	default:
	}
}

func (s *Supervisor) desired() (config.Container, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg == nil {
		return config.Container{}, false
	}
	return *s.cfg, true
}

func (s *Supervisor) update(f func(st *Status)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

// Run connects to dockerd and keeps the container converged until ctx
// ends. Losing dockerd is not an error: it reconnects with backoff and
// re-inspects everything, since events are lost across daemon restarts.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.docker == nil {
		cli, err := NewDockerClient()
		if err != nil {
			s.update(func(st *Status) { st.Docker = "unreachable"; st.Error = err.Error() })
			return err
		}
		defer cli.Close()
		s.docker = cli
	}
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		if err := s.connect(ctx); err != nil {
			s.log.Warn("docker unreachable", "err", err, "retry_in", backoff)
			s.update(func(st *Status) { st.Docker = "unreachable"; st.DockerError = err.Error() })
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		err := s.session(ctx)
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("docker event stream ended; reconnecting", "err", err)
		s.update(func(st *Status) { st.Docker = "unreachable"; st.DockerError = fmt.Sprint(err) })
	}
	s.shutdown()
	return nil
}

func (s *Supervisor) connect(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ping, err := s.docker.Ping(pctx)
	if err != nil {
		return err
	}
	// Re-negotiate: the daemon that came back may speak another version.
	s.docker.NegotiateAPIVersionPing(ping)
	v, err := s.docker.ServerVersion(pctx)
	if err != nil {
		return err
	}
	s.update(func(st *Status) {
		st.Docker = "ok"
		st.DockerError = ""
		st.DockerVersion = v.Version
		st.DockerAPI = v.APIVersion
	})
	s.log.Info("connected to docker", "version", v.Version, "api", v.APIVersion)
	s.notify("connected")
	return nil
}

// session consumes events and reconciles until the stream fails or ctx ends.
func (s *Supervisor) session(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("type", string(events.NetworkEventType)))
	evs, errs := s.docker.Events(sctx, events.ListOptions{Filters: f})
	s.reconcile(ctx, "connected")
	c, _ := s.desired()
	ticker := time.NewTicker(max(c.ReconcileInterval.D(), time.Second))
	defer ticker.Stop()
	for {
		var restartC <-chan time.Time
		s.mu.Lock()
		if !s.restartAt.IsZero() {
			restartC = time.After(max(s.restartAt.Sub(s.now()), 0))
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case ev := <-evs:
			s.handleEvent(ctx, ev)
		case <-s.nudge:
			if c2, ok := s.desired(); ok && c2.ReconcileInterval != c.ReconcileInterval {
				c = c2
				ticker.Reset(max(c.ReconcileInterval.D(), time.Second))
			}
			s.reconcile(ctx, "config")
		case <-ticker.C:
			s.reconcile(ctx, "periodic")
			s.maybeCheckUpdate(ctx)
		case <-restartC:
			s.reconcile(ctx, "restart due")
		}
	}
}

func (s *Supervisor) handleEvent(ctx context.Context, ev events.Message) {
	if ev.Type == events.NetworkEventType {
		switch ev.Action {
		case events.ActionCreate, events.ActionConnect:
			s.notify("network")
		}
		if ev.Action == events.ActionDisconnect && ev.Actor.Attributes["container"] == s.ContainerID() && s.ContainerID() != "" {
			s.reconcile(ctx, "network disconnect")
		}
		return
	}
	if ev.Actor.Attributes[LabelManaged] != "true" {
		return
	}
	switch ev.Action {
	case events.ActionOOM:
		// Counted once, from State.OOMKilled, when the exit is recorded.
		s.log.Warn("kernel OOM killer hit the container (memory limit)", "id", short(ev.Actor.ID))
	case events.ActionDie, events.ActionDestroy, events.ActionStart, events.ActionStop,
		events.ActionRename, events.ActionCreate:
		s.reconcile(ctx, "event "+string(ev.Action))
	case events.ActionHealthStatusHealthy, events.ActionHealthStatusUnhealthy, events.ActionHealthStatus:
		s.reconcile(ctx, "event "+string(ev.Action))
	default:
		if strings.HasPrefix(string(ev.Action), "health_status") {
			s.reconcile(ctx, "event health")
		}
	}
}

// shutdown leaves the container running unless stop_on_exit is set.
func (s *Supervisor) shutdown() {
	c, ok := s.desired()
	if !ok || !c.StopOnExit {
		return
	}
	id := s.ContainerID()
	if id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.StopTimeout.D()+5*time.Second)
	defer cancel()
	secs := int(c.StopTimeout.D().Seconds())
	if err := s.docker.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil {
		s.log.Warn("stopping container on exit", "err", err)
	} else {
		s.log.Info("stopped container on exit (stop_on_exit)", "id", short(id))
	}
}

// managed lists the containers that carry zguard's label for this name,
// plus any container holding the name without the label (a conflict).
func (s *Supervisor) findContainers(ctx context.Context, name string) (main, old *container.Summary, conflict *container.Summary, err error) {
	list, err := s.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing containers: %w", err)
	}
	for i := range list {
		c := &list[i]
		for _, n := range c.Names {
			n = strings.TrimPrefix(n, "/")
			switch n {
			case name:
				if c.Labels[LabelManaged] == "true" {
					main = c
				} else {
					conflict = c
				}
			case name + oldSuffix:
				if c.Labels[LabelManaged] == "true" {
					old = c
				}
			}
		}
	}
	return main, old, conflict, nil
}

// reconcile is the one place that decides and acts. It reads the world
// (containers with our name and label), compares it with the desired
// spec, and converges one step at a time.
func (s *Supervisor) reconcile(ctx context.Context, why string) {
	c, ok := s.desired()
	if !ok {
		return
	}
	if err := s.reconcileOnce(ctx, c, why); err != nil {
		s.log.Error("reconcile failed", "why", why, "err", err)
		s.update(func(st *Status) { st.Error = err.Error() })
		if isConnErr(err) {
			s.update(func(st *Status) { st.Docker = "unreachable"; st.DockerError = err.Error() })
		}
		return
	}
	s.update(func(st *Status) { st.Error = "" })
	s.once.Do(func() { close(s.ready) })
}

func (s *Supervisor) reconcileOnce(ctx context.Context, c config.Container, why string) error {
	main, old, conflict, err := s.findContainers(ctx, c.Name)
	if err != nil {
		return err
	}
	if conflict != nil {
		msg := fmt.Sprintf("a container named %q (%s) exists without the %s=true label; zguard will not touch it: remove or rename it", c.Name, short(conflict.ID), LabelManaged)
		s.update(func(st *Status) {
			st.Conflict = msg
			st.State = StateMissing
			st.ID = ""
		})
		return errors.New(msg)
	}
	s.update(func(st *Status) { st.Conflict = "" })
	if old != nil {
		// An update was interrupted (zguard crashed or was stopped).
		return s.recoverUpdate(ctx, c, main, old)
	}
	if main == nil {
		s.log.Info("container missing; creating", "name", c.Name, "why", why)
		if why != "connected" && why != "config" && s.ContainerID() != "" {
			s.recordDrift("container was removed")
		}
		return s.create(ctx, c, "")
	}
	ins, err := s.docker.ContainerInspect(ctx, main.ID)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil // gone meanwhile; the destroy event brings us back
		}
		return fmt.Errorf("inspecting container: %w", err)
	}
	if d := drift(c, ins); len(d) > 0 {
		reason := strings.Join(d, "; ")
		if ins.Config.Labels[LabelSpec] == specHash(c) || why != "config" {
			s.recordDrift(reason)
		}
		s.log.Warn("container differs from spec; recreating", "id", short(ins.ID), "drift", reason)
		s.setInSync(false)
		return s.recreate(ctx, c, ins)
	}
	s.setInSync(true)
	s.observe(ctx, c, ins)
	if ins.State.Running || ins.State.Restarting {
		return nil
	}
	return s.handleExited(ctx, c, ins)
}

// observe copies the container's live state into status.
func (s *Supervisor) observe(ctx context.Context, c config.Container, ins container.InspectResponse) {
	health := "none"
	if ins.State.Health != nil {
		health = ins.State.Health.Status
	} else if ins.State.Running && c.HealthURL != "" {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := s.probe(pctx, c.HealthURL); err != nil {
			health = "unhealthy"
		} else {
			health = "healthy"
		}
		cancel()
	}
	var ports []PortStatus
	if ins.NetworkSettings != nil {
		for port, bs := range ins.NetworkSettings.Ports {
			for _, b := range bs {
				hp, _ := strconv.Atoi(b.HostPort)
				ports = append(ports, PortStatus{Container: port.Int(), Protocol: port.Proto(), HostIP: b.HostIP, HostPort: hp})
			}
		}
	}
	sortPorts(ports)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.ID = ins.ID
	s.st.ImageID = ins.Image
	s.st.Health = health
	s.st.Ports = ports
	s.st.Pid = ins.State.Pid
	if ins.State.StartedAt != "" {
		if t, err := time.Parse(time.RFC3339Nano, ins.State.StartedAt); err == nil && ins.State.Running {
			s.st.StartedAt = t
		}
	}
	if s.accepted == "" && ins.State.Running && health != "unhealthy" {
		s.accepted = ins.Image
	}
	switch {
	case ins.State.Running && health == "starting":
		s.st.State = StateStarting
	case ins.State.Running:
		s.st.State = StateRunning
	case ins.State.Restarting:
		s.st.State = StateRestarting
	}
	if ins.State.Running && s.st.CrashLoop {
		// A crash loop ends once the container stays up past reset_after.
		if s.now().Sub(s.st.StartedAt) >= c.Restart.ResetAfter.D() {
			s.st.CrashLoop = false
		} else {
			s.st.State = StateCrashLoop
		}
	}
}

// handleExited records an exit once and starts the container again after
// the backoff delay.
func (s *Supervisor) handleExited(ctx context.Context, c config.Container, ins container.InspectResponse) error {
	finished, _ := time.Parse(time.RFC3339Nano, ins.State.FinishedAt)
	started, _ := time.Parse(time.RFC3339Nano, ins.State.StartedAt)
	now := s.now()
	s.mu.Lock()
	s.st.ID = ins.ID
	s.st.Pid = 0
	s.st.Health = "none"
	newExit := finished.After(s.lastExitSeen) || (finished.IsZero() && s.restartAt.IsZero())
	if newExit {
		s.lastExitSeen = finished
		uptime := time.Duration(0)
		if !started.IsZero() && finished.After(started) {
			uptime = finished.Sub(started)
		}
		e := Exit{Time: finished, Code: ins.State.ExitCode, OOMKilled: ins.State.OOMKilled, Uptime: uptime, Error: ins.State.Error}
		if finished.IsZero() {
			e.Time = now
		}
		s.exits = trimExits(append(s.exits, e), c.CrashLoop.Window.D(), now)
		plan := planRestart(s.exits, c.Restart, c.CrashLoop, now)
		s.restartAt = now.Add(plan.Delay)
		s.delays = append(s.delays, plan.Delay)
		if len(s.delays) > 20 {
			s.delays = s.delays[len(s.delays)-20:]
		}
		s.st.CrashLoop = plan.CrashLoop
		s.st.State = StateRestarting
		if plan.CrashLoop {
			s.st.State = StateCrashLoop
		}
		if e.OOMKilled {
			s.st.OOMKills++
		}
		s.log.Warn("container exited", "id", short(ins.ID), "exit_code", e.Code, "oom_killed", e.OOMKilled,
			"uptime", uptime.Round(time.Millisecond), "restart_in", plan.Delay, "crash_loop", plan.CrashLoop)
	}
	due := !s.restartAt.IsZero() && !now.Before(s.restartAt)
	s.mu.Unlock()
	if newExit && !due {
		s.recordLogTail(ctx, ins.ID, time.Time{})
	}
	if !due {
		return nil
	}
	if err := s.start(ctx, c, ins.ID); err != nil {
		return err
	}
	s.mu.Lock()
	s.restartAt = time.Time{}
	s.st.Restarts++
	s.mu.Unlock()
	if newExit {
		// Read the crashed run's last lines after the restart, so the log
		// call does not delay it; Until keeps the new run's lines out.
		s.recordLogTail(ctx, ins.ID, finished)
	}
	return nil
}

// recordLogTail keeps the last lines the container logged (up to until,
// when set) for status.
func (s *Supervisor) recordLogTail(ctx context.Context, id string, until time.Time) {
	tail := s.logTail(ctx, id, 10, until)
	s.update(func(st *Status) { st.LogTail = tail })
}

func (s *Supervisor) start(ctx context.Context, c config.Container, id string) error {
	if err := s.docker.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return explainStartError(c, err)
	}
	s.log.Info("started container", "id", short(id))
	return nil
}

// explainStartError turns Docker's error for a missing nvidia runtime into
// what the operator has to do.
func explainStartError(c config.Container, err error) error {
	msg := err.Error()
	if strings.Contains(msg, "could not select device driver") || strings.Contains(msg, "nvidia-container-cli") ||
		strings.Contains(msg, "unknown or invalid runtime name: nvidia") {
		return fmt.Errorf("starting container with gpus = %s: dockerd has no NVIDIA runtime (%v); install nvidia-container-toolkit, "+
			"run `nvidia-ctk runtime configure --runtime=docker` and restart dockerd, or set gpus = \"none\"", c.GPUs.String(), err)
	}
	return fmt.Errorf("starting container: %w", err)
}

// ensureImage makes the image present according to the pull policy and
// returns its ID.
func (s *Supervisor) ensureImage(ctx context.Context, c config.Container, forcePull bool) (string, error) {
	ins, err := s.docker.ImageInspect(ctx, c.Image)
	present := err == nil
	if err != nil && !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspecting image %s: %w", c.Image, err)
	}
	pull := forcePull || c.Pull == "always" || (c.Pull == "missing" && !present)
	if pull && c.Pull == "never" && !forcePull {
		pull = false
	}
	if pull {
		if err := s.pull(ctx, c.Image); err != nil {
			if present && !forcePull {
				s.log.Warn("pull failed; using the image already present", "image", c.Image, "err", err)
				return ins.ID, nil
			}
			return "", err
		}
		ins, err = s.docker.ImageInspect(ctx, c.Image)
		if err != nil {
			return "", fmt.Errorf("inspecting image %s after pull: %w", c.Image, err)
		}
		return ins.ID, nil
	}
	if !present {
		return "", fmt.Errorf("image %s is not present and pull = %q", c.Image, c.Pull)
	}
	return ins.ID, nil
}

func (s *Supervisor) pull(ctx context.Context, ref string) error {
	s.log.Info("pulling image", "image", ref)
	t0 := s.now()
	rc, err := s.docker.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return fmt.Errorf("pulling %s: %w", ref, err)
	}
	defer rc.Close()
	if err := decodePullStream(rc); err != nil {
		return fmt.Errorf("pulling %s: %w", ref, err)
	}
	s.log.Info("pulled image", "image", ref, "took", s.now().Sub(t0).Round(time.Millisecond))
	return nil
}

// create pulls (per policy) and creates and starts the container.
func (s *Supervisor) create(ctx context.Context, c config.Container, imageID string) error {
	if imageID == "" {
		s.mu.Lock()
		imageID = s.accepted
		s.mu.Unlock()
	}
	if imageID == "" {
		id, err := s.ensureImage(ctx, c, false)
		if err != nil {
			s.update(func(st *Status) { st.State = StateMissing; st.ID = "" })
			return err
		}
		imageID = id
	}
	spec, err := buildSpec(c, imageID, nil)
	if err != nil {
		return err
	}
	resp, err := s.docker.ContainerCreate(ctx, spec.Config, spec.Host, nil, nil, c.Name)
	if err != nil {
		s.update(func(st *Status) { st.State = StateMissing; st.ID = "" })
		return fmt.Errorf("creating container %s: %w", c.Name, err)
	}
	s.log.Info("created container", "name", c.Name, "id", short(resp.ID), "image", c.Image, "image_id", short(imageID))
	s.update(func(st *Status) { st.ID = resp.ID; st.State = StateStarting; st.ImageID = imageID })
	if err := s.start(ctx, c, resp.ID); err != nil {
		s.update(func(st *Status) { st.State = StateStopped })
		return err
	}
	return nil
}

// recreate replaces a container whose spec or live state drifted. The new
// image is made present first; the old container is removed only then.
func (s *Supervisor) recreate(ctx context.Context, c config.Container, ins container.InspectResponse) error {
	imageID := ""
	if ins.Config.Labels[LabelImage] == c.Image {
		s.mu.Lock()
		imageID = s.accepted
		s.mu.Unlock()
		if imageID == "" && ins.State.Running {
			imageID = ins.Image
		}
	}
	if imageID == "" {
		id, err := s.ensureImage(ctx, c, false)
		if err != nil {
			return fmt.Errorf("preparing image before recreate (old container left running): %w", err)
		}
		imageID = id
	}
	if err := s.remove(ctx, c, ins.ID); err != nil {
		return err
	}
	return s.create(ctx, c, imageID)
}

func (s *Supervisor) remove(ctx context.Context, c config.Container, id string) error {
	secs := int(c.StopTimeout.D().Seconds())
	if err := s.docker.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !errdefs.IsNotFound(err) {
		s.log.Warn("stopping container before removal", "id", short(id), "err", err)
	}
	if err := s.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing container %s: %w", short(id), err)
	}
	s.log.Info("removed container", "id", short(id))
	return nil
}

func (s *Supervisor) logTail(ctx context.Context, id string, n int, until time.Time) []string {
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)}
	if !until.IsZero() {
		opts.Until = until.Add(time.Millisecond).Format(time.RFC3339Nano)
	}
	rc, err := s.docker.ContainerLogs(ctx, id, opts)
	if err != nil {
		return []string{"(log unavailable: " + err.Error() + ")"}
	}
	defer rc.Close()
	var out, errb strings.Builder
	if _, err := stdcopy.StdCopy(&out, &errb, rc); err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(out.String()+errb.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

func (s *Supervisor) setInSync(v bool) { s.update(func(st *Status) { st.InSync = v }) }

func (s *Supervisor) recordDrift(what string) {
	s.update(func(st *Status) { st.LastDrift = &Drift{Time: s.now(), What: what} })
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func isConnErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || strings.Contains(err.Error(), "Cannot connect to the Docker daemon") ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such file or directory")
}
