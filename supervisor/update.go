package supervisor

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/zguard/zguard/config"
)

// maybeCheckUpdate runs an update check when one is due. Images pinned by
// digest are never "updated", and pull = "never" means zguard never asks
// the registry.
func (s *Supervisor) maybeCheckUpdate(ctx context.Context) {
	c, ok := s.desired()
	if !ok || c.UpdateInterval == 0 || c.PinnedByDigest() || c.Pull == "never" {
		return
	}
	now := s.now()
	s.mu.Lock()
	if s.nextCheck.IsZero() {
		s.nextCheck = now.Add(c.UpdateInterval.D())
	}
	due := !now.Before(s.nextCheck)
	if due {
		s.nextCheck = now.Add(c.UpdateInterval.D())
	}
	running := s.st.ID != "" && (s.st.State == StateRunning || s.st.State == StateStarting)
	s.mu.Unlock()
	if due && running {
		s.checkUpdate(ctx)
	}
}

// checkUpdate pulls the configured reference and, when it points to a new
// image, replaces the container behind a health gate with rollback. The
// running container is not stopped until the new image is fully present;
// a failed pull leaves it alone and is reported.
func (s *Supervisor) checkUpdate(ctx context.Context) {
	c, ok := s.desired()
	if !ok {
		return
	}
	now := s.now()
	record := func(u UpdateRecord, notable bool) {
		u.Time = now
		s.mu.Lock()
		s.st.LastCheck = &u
		if notable {
			uu := u
			s.st.LastUpdate = &uu
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	current := s.st.ImageID
	mainID := s.st.ID
	bad := s.badImage
	s.mu.Unlock()
	if err := s.pull(ctx, c.Image); err != nil {
		s.log.Warn("update check failed; container left running", "image", c.Image, "err", err)
		record(UpdateRecord{Result: "failed", Error: err.Error()}, true)
		return
	}
	ins, err := s.docker.ImageInspect(ctx, c.Image)
	if err != nil {
		record(UpdateRecord{Result: "failed", Error: "inspecting pulled image: " + err.Error()}, true)
		return
	}
	switch {
	case ins.ID == current:
		record(UpdateRecord{Result: "unchanged", From: current}, false)
		s.clearFailedUpdate()
		return
	case ins.ID == bad:
		record(UpdateRecord{Result: "skipped", From: current, To: ins.ID, Error: "image failed its health gate before"}, false)
		return
	}
	s.log.Info("new image digest; updating", "image", c.Image, "from", short(current), "to", short(ins.ID))
	old, err := s.docker.ContainerInspect(ctx, mainID)
	if err != nil {
		record(UpdateRecord{Result: "failed", Error: "inspecting running container: " + err.Error()}, true)
		return
	}
	if err := s.updateTo(ctx, c, old, ins.ID, hasHealthcheck(ins)); err != nil {
		s.log.Warn("update rolled back", "to", short(ins.ID), "reason", err)
		s.mu.Lock()
		s.badImage = ins.ID
		s.mu.Unlock()
		record(UpdateRecord{Result: "rolled_back", From: current, To: ins.ID, Error: err.Error()}, true)
		return
	}
	record(UpdateRecord{Result: "updated", From: current, To: ins.ID}, true)
}

func (s *Supervisor) clearFailedUpdate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.LastUpdate != nil && s.st.LastUpdate.Result == "failed" {
		s.st.LastUpdate.Result = "recovered"
	}
}

func hasHealthcheck(ins image.InspectResponse) bool {
	if ins.Config == nil || ins.Config.Healthcheck == nil {
		return false
	}
	t := ins.Config.Healthcheck.Test
	return len(t) > 0 && t[0] != "NONE"
}

// updateTo keeps the old container (renamed and stopped), starts the new
// one under the real name, and gates on health. It returns nil when the new
// container is healthy and the old one is gone, or the reason it rolled back.
// Every step leaves a state recoverUpdate can finish after a crash: there is
// never a second container holding the ports, and never zero containers
// when a working one existed.
func (s *Supervisor) updateTo(ctx context.Context, c config.Container, old container.InspectResponse, newImage string, imageHealthcheck bool) error {
	oldName := c.Name + oldSuffix
	if err := s.docker.ContainerRename(ctx, old.ID, oldName); err != nil {
		return fmt.Errorf("renaming old container: %w", err)
	}
	secs := int(c.StopTimeout.D().Seconds())
	if err := s.docker.ContainerStop(ctx, old.ID, container.StopOptions{Timeout: &secs}); err != nil {
		s.restoreOld(ctx, c, old.ID, "")
		return fmt.Errorf("stopping old container: %w", err)
	}
	spec, err := buildSpec(c, newImage, map[string]string{LabelReplaces: old.ID})
	if err != nil {
		s.restoreOld(ctx, c, old.ID, "")
		return err
	}
	resp, err := s.docker.ContainerCreate(ctx, spec.Config, spec.Host, nil, nil, c.Name)
	if err != nil {
		s.restoreOld(ctx, c, old.ID, "")
		return fmt.Errorf("creating new container: %w", err)
	}
	if err := s.start(ctx, c, resp.ID); err != nil {
		s.restoreOld(ctx, c, old.ID, resp.ID)
		return err
	}
	s.update(func(st *Status) { st.ID = resp.ID; st.ImageID = newImage; st.State = StateStarting })
	if err := s.waitHealthy(ctx, c, resp.ID, imageHealthcheck); err != nil {
		s.restoreOld(ctx, c, old.ID, resp.ID)
		return err
	}
	if err := s.docker.ContainerRemove(ctx, old.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		s.log.Warn("removing old container after update", "id", short(old.ID), "err", err)
	}
	s.mu.Lock()
	s.accepted = newImage
	s.exits = nil
	s.delays = nil
	s.st.CrashLoop = false
	s.mu.Unlock()
	if c.PruneOldImages && old.Image != newImage {
		if _, err := s.docker.ImageRemove(ctx, old.Image, image.RemoveOptions{PruneChildren: true}); err != nil {
			s.log.Info("old image kept", "image_id", short(old.Image), "err", err)
		} else {
			s.log.Info("removed old image", "image_id", short(old.Image))
		}
	}
	s.log.Info("update complete", "id", short(resp.ID), "image_id", short(newImage))
	return nil
}

// restoreOld removes the failed new container (if any), gives the old one
// its name back and starts it.
func (s *Supervisor) restoreOld(ctx context.Context, c config.Container, oldID, newID string) {
	if newID != "" {
		if err := s.docker.ContainerRemove(ctx, newID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			s.log.Error("removing failed new container", "id", short(newID), "err", err)
		}
	}
	if err := s.docker.ContainerRename(ctx, oldID, c.Name); err != nil {
		s.log.Error("renaming old container back", "id", short(oldID), "err", err)
	}
	if err := s.start(ctx, c, oldID); err != nil {
		s.log.Error("restarting old container", "id", short(oldID), "err", err)
	}
	s.update(func(st *Status) { st.ID = oldID })
}

// waitHealthy waits up to health_timeout for the container to be healthy:
// its image's HEALTHCHECK when it has one, otherwise zguard's probe of
// health_url. A container that exits fails at once.
func (s *Supervisor) waitHealthy(ctx context.Context, c config.Container, id string, imageHealthcheck bool) error {
	deadline := time.Now().Add(c.HealthTimeout.D())
	lastErr := "no answer yet"
	for {
		ins, err := s.docker.ContainerInspect(ctx, id)
		if err != nil {
			return fmt.Errorf("inspecting new container: %w", err)
		}
		if !ins.State.Running {
			tail := s.logTail(ctx, id, 5, time.Time{})
			return fmt.Errorf("new container exited with code %d (oom_killed=%v); log tail: %s",
				ins.State.ExitCode, ins.State.OOMKilled, strings.Join(tail, " | "))
		}
		if imageHealthcheck && ins.State.Health != nil {
			switch ins.State.Health.Status {
			case "healthy":
				return nil
			case "unhealthy":
				return fmt.Errorf("new container is unhealthy (image HEALTHCHECK)")
			}
			lastErr = "health check " + ins.State.Health.Status
		} else if c.HealthURL != "" {
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err := s.probe(pctx, c.HealthURL)
			cancel()
			if err == nil {
				return nil
			}
			lastErr = err.Error()
		} else {
			return nil // nothing to gate on: running is all we can know
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("new container not healthy within %s: %s", c.HealthTimeout.D(), lastErr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// recoverUpdate finishes an update that zguard did not see through (it
// crashed or was stopped after renaming the old container). If the new
// container is healthy it wins; otherwise the old one is restored.
func (s *Supervisor) recoverUpdate(ctx context.Context, c config.Container, main, old *container.Summary) error {
	s.log.Warn("found an interrupted update; recovering", "old", short(old.ID))
	if main == nil {
		s.restoreOld(ctx, c, old.ID, "")
		s.recordDrift("interrupted update: old container restored")
		return nil
	}
	ins, err := s.docker.ContainerInspect(ctx, main.ID)
	if err != nil {
		return fmt.Errorf("inspecting new container: %w", err)
	}
	if ins.State.Running {
		imgIns, _ := s.docker.ImageInspect(ctx, ins.Image)
		if err := s.waitHealthy(ctx, c, main.ID, hasHealthcheck(imgIns)); err == nil {
			if err := s.docker.ContainerRemove(ctx, old.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("removing old container: %w", err)
			}
			s.mu.Lock()
			s.accepted = ins.Image
			s.mu.Unlock()
			s.recordDrift("interrupted update: new container healthy, old removed")
			return nil
		}
	}
	s.restoreOld(ctx, c, old.ID, main.ID)
	s.recordDrift("interrupted update: new container not healthy, old restored")
	return nil
}

// httpProbe is the default health probe: GET url, expect 2xx.
func httpProbe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("health probe %s: %s", url, resp.Status)
	}
	return nil
}
