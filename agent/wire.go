package agent

import (
	"context"
	"errors"
	"sync"

	"github.com/zguard/zguard/comfy"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/firewall"
	"github.com/zguard/zguard/gateway"
	"github.com/zguard/zguard/gpu"
	"github.com/zguard/zguard/health"
	"github.com/zguard/zguard/outputlock"
	"github.com/zguard/zguard/supervisor"
)

// wire builds every subsystem and the switchboard lines. Cross-subsystem
// needs are satisfied here and nowhere else: the firewall is the gateway's
// Banner and hears the supervisor's Docker events; the supervisor is the
// GPU watchdog's ContainerLocator; the ComfyUI client, which follows
// container.api_url across reloads, is its JobInterrupter.
func (a *Agent) wire() {
	log := a.log
	cui := &comfyProxy{}
	var fw *firewall.Firewall
	sup := supervisor.New(supervisor.Deps{
		Log: log.With("subsystem", "supervisor"),
		OnDaemonEvent: func(kind string) {
			if fw != nil {
				fw.Repair("docker " + kind)
			}
		},
	})
	fw = firewall.New(firewall.Deps{
		Log:            log.With("subsystem", "firewall"),
		EngineVersion:  sup.EngineVersion,
		PublishedPorts: sup.PublishedPorts,
	})
	lock := outputlock.New(outputlock.Deps{Log: log.With("subsystem", "output")})
	wd := gpu.New(gpu.Deps{
		Log:         log.With("subsystem", "gpu"),
		Interrupter: cui,
		Killer:      gpu.SignalKiller{},
		Locator:     sup,
	})
	gate := gateway.New(gateway.Deps{Log: log.With("subsystem", "gateway"), Banner: fw})
	a.ready = sup.Ready()

	a.subs = []*subsystem{
		{
			name:    "container",
			section: func(c *config.Config) any { return c.Container },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				cui.set(c.Container.APIURL)
				return sup.Apply(ctx, c.Container)
			},
			run:    sup.Run,
			status: func() any { return sup.Status() },
			finds:  func() []health.Finding { return sup.Status().Findings() },
		},
		{
			name:    "firewall",
			section: func(c *config.Config) any { return c.Firewall },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "firewall: applied", fw.Apply(ctx, c.Firewall)
			},
			run:    fw.Run,
			status: func() any { return fw.Status() },
			finds:  func() []health.Finding { return fw.Status().Findings() },
		},
		{
			name:    "output",
			section: func(c *config.Config) any { return c.Output },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "output: applied", lock.Apply(ctx, c.Output)
			},
			run:    lock.Run,
			status: func() any { return lock.Status() },
			finds:  func() []health.Finding { return lock.Status().Findings() },
		},
		{
			name:    "gpu",
			section: func(c *config.Config) any { return c.GPU },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "gpu: applied", wd.Apply(ctx, c.GPU)
			},
			run:    wd.Run,
			status: func() any { return wd.Status() },
			finds:  func() []health.Finding { return wd.Status().Findings() },
		},
		{
			name:        "gateway",
			section:     func(c *config.Config) any { return c.Gateway },
			everyReload: true,
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				if !c.Gateway.Enabled {
					return "gateway: disabled", gate.Apply(ctx, c.Gateway)
				}
				return "gateway: applied", gate.Apply(ctx, c.Gateway)
			},
			run:    gate.Run,
			status: func() any { return gate.Status() },
			finds:  func() []health.Finding { return gate.Status().Findings() },
		},
	}
}

var errNoAPI = errors.New("no ComfyUI API address (container.api_url) configured")

// comfyProxy is a ComfyUI client whose address follows reloads.
type comfyProxy struct {
	mu  sync.Mutex
	cli *comfy.Client
}

func (c *comfyProxy) set(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if url == "" {
		c.cli = nil
		return
	}
	if c.cli == nil || c.cli.BaseURL() != url {
		c.cli = comfy.NewClient(url)
	}
}

func (c *comfyProxy) get() (*comfy.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cli == nil {
		return nil, errNoAPI
	}
	return c.cli, nil
}

// Interrupt asks ComfyUI to stop the running job.
func (c *comfyProxy) Interrupt(ctx context.Context) error {
	cli, err := c.get()
	if err != nil {
		return err
	}
	return cli.Interrupt(ctx)
}

// ClearQueue drops ComfyUI's pending jobs.
func (c *comfyProxy) ClearQueue(ctx context.Context) error {
	cli, err := c.get()
	if err != nil {
		return err
	}
	return cli.ClearQueue(ctx)
}

// RunningPrompts lists the prompt ids ComfyUI is executing.
func (c *comfyProxy) RunningPrompts(ctx context.Context) ([]string, error) {
	cli, err := c.get()
	if err != nil {
		return nil, err
	}
	return cli.RunningPrompts(ctx)
}
