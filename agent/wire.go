package agent

import (
	"context"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/health"
	"github.com/zguard/zguard/supervisor"
)

// parts holds the concrete subsystems, for status and cross-wiring.
type parts struct {
	sup *supervisor.Supervisor
}

// wire builds every subsystem and the switchboard lines. Cross-subsystem
// needs are satisfied here and nowhere else.
func (a *Agent) wire() {
	log := a.log
	p := &parts{}
	p.sup = supervisor.New(supervisor.Deps{
		Log: log.With("subsystem", "supervisor"),
	})
	a.ready = p.sup.Ready()
	a.parts = p
	a.subs = []*subsystem{
		{
			name:    "container",
			section: func(c *config.Config) any { return c.Container },
			apply: func(ctx context.Context, c *config.Config) (string, error) {
				return p.sup.Apply(ctx, c.Container)
			},
			run:    p.sup.Run,
			status: func() any { return p.sup.Status() },
			finds:  func() []health.Finding { return p.sup.Status().Findings() },
		},
	}
}
