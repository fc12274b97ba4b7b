package agent

import (
	"context"
	"syscall"

	"github.com/zguard/zguard/comfy"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/firewall"
	"github.com/zguard/zguard/gateway"
	"github.com/zguard/zguard/gpu"
	"github.com/zguard/zguard/health"
	"github.com/zguard/zguard/outputlock"
	"github.com/zguard/zguard/supervisor"
)

// parts holds the concrete subsystems, for cross-wiring.
type parts struct {
	sup  *supervisor.Supervisor
	fw   *firewall.Firewall
	lock *outputlock.Lock
	gpu  *gpu.Watchdog
	gate *gateway.Gateway
	// comfy is the ComfyUI client the GPU watchdog interrupts jobs through;
	// it follows container.api_url across reloads.
	comfy *comfyProxy
}

// wire builds every subsystem and the switchboard lines. Cross-subsystem
// needs are satisfied here and nowhere else: the firewall is the gateway's
// Banner and hears the supervisor's Docker events; the supervisor is the
// GPU watchdog's ContainerLocator; the ComfyUI client is its JobInterrupter.
func (a *Agent) wire() {
	log := a.log
	p := &parts{comfy: &comfyProxy{}}
	var fw *firewall.Firewall
	p.sup = supervisor.New(supervisor.Deps{
		Log: log.With("subsystem", "supervisor"),
		OnDaemonEvent: func(kind string) {
			if fw != nil {
				fw.Repair("docker " + kind)
			}
		},
	})
	fw = firewall.New(firewall.Deps{
		Log:            log.With("subsystem", "firewall"),
		EngineVersion:  p.sup.EngineVersion,
		PublishedPorts: p.sup.PublishedPorts,
	})
	p.fw = fw
	p.lock = outputlock.New(outputlock.Deps{Log: log.With("subsystem", "output")})
	p.gpu = gpu.New(gpu.Deps{
		Log:         log.With("subsystem", "gpu"),
		Interrupter: p.comfy,
		Killer:      killer{},
		Locator:     p.sup,
	})
	p.gate = gateway.New(gateway.Deps{Log: log.With("subsystem", "gateway"), Banner: fw})
	a.ready = p.sup.Ready()
	a.parts = p

	a.subs = []*subsystem{
		{
			name:    "container",
			section: func(c *config.Config) any { return c.Container },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				p.comfy.set(c.Container.APIURL)
				return p.sup.Apply(ctx, c.Container)
			},
			run:    p.sup.Run,
			status: func() any { return p.sup.Status() },
			finds:  func() []health.Finding { return p.sup.Status().Findings() },
		},
		{
			name:    "firewall",
			section: func(c *config.Config) any { return c.Firewall },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "firewall: applied", p.fw.Apply(ctx, c.Firewall)
			},
			run:    p.fw.Run,
			status: func() any { return p.fw.Status() },
			finds:  func() []health.Finding { return p.fw.Status().Findings() },
		},
		{
			name:    "output",
			section: func(c *config.Config) any { return c.Output },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "output: applied", p.lock.Apply(ctx, c.Output)
			},
			run:    p.lock.Run,
			status: func() any { return p.lock.Status() },
			finds:  func() []health.Finding { return p.lock.Status().Findings() },
		},
		{
			name:    "gpu",
			section: func(c *config.Config) any { return c.GPU },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return "gpu: applied", p.gpu.Apply(ctx, c.GPU)
			},
			run:    p.gpu.Run,
			status: func() any { return p.gpu.Status() },
			finds:  func() []health.Finding { return p.gpu.Status().Findings() },
		},
		{
			name:        "gateway",
			section:     func(c *config.Config) any { return c.Gateway },
			everyReload: true,
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				if !c.Gateway.Enabled {
					return "gateway: disabled", p.gate.Apply(ctx, c.Gateway)
				}
				return "gateway: applied", p.gate.Apply(ctx, c.Gateway)
			},
			run:    p.gate.Run,
			status: func() any { return p.gate.Status() },
			finds:  func() []health.Finding { return p.gate.Status().Findings() },
		},
	}
}

// killer SIGKILLs a process: the GPU watchdog's last resort, only ever
// called on a PID the watchdog attributed to the managed container.
type killer struct{}

func (killer) Kill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// comfyProxy is a ComfyUI client whose address follows reloads.
type comfyProxy struct {
	mu  syncMutex
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
