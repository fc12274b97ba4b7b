package gateway

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// promptLimits enforces, per identity, the number of prompts running or
// queued in ComfyUI and the rate of new prompts. A slot is reserved before
// the request is forwarded (so concurrent POSTs cannot both slip under the
// limit), turned into a tracked prompt id when ComfyUI answers, and freed
// when ComfyUI no longer lists the id in its queue.
type promptLimits struct {
	mu       sync.Mutex
	max      int
	perMin   int
	ids      map[string]map[string]time.Time // identity -> prompt id -> submitted
	reserved map[string]int
	limiters map[string]*rate.Limiter
}

func newPromptLimits() *promptLimits {
	return &promptLimits{ids: map[string]map[string]time.Time{}, reserved: map[string]int{}, limiters: map[string]*rate.Limiter{}}
}

// configure sets the limits; 0 means unlimited. Rate limiters restart when
// the rate changes.
func (p *promptLimits) configure(maxConcurrent, perMinute int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if perMinute != p.perMin {
		p.limiters = map[string]*rate.Limiter{}
	}
	p.max, p.perMin = maxConcurrent, perMinute
}

// limitVerdict says whether a prompt may go ahead and, if not, why and
// when to retry.
type limitVerdict struct {
	ok     bool
	reason string
	retry  time.Duration
}

// reserve asks for a slot for one new prompt by identity at now. On
// success the caller must later call promptStarted or release.
func (p *promptLimits) reserve(identity string, now time.Time) limitVerdict {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.max > 0 && len(p.ids[identity])+p.reserved[identity] >= p.max {
		return limitVerdict{reason: "too many running prompts", retry: 5 * time.Second}
	}
	if p.perMin > 0 {
		lim := p.limiters[identity]
		if lim == nil {
			lim = rate.NewLimiter(rate.Limit(float64(p.perMin)/60), p.perMin)
			p.limiters[identity] = lim
		}
		r := lim.ReserveN(now, 1)
		if d := r.DelayFrom(now); !r.OK() || d > 0 {
			r.CancelAt(now)
			return limitVerdict{reason: "prompt rate limit", retry: d}
		}
	}
	p.reserved[identity]++
	return limitVerdict{ok: true}
}

// promptStarted turns a reservation into a tracked prompt id.
func (p *promptLimits) promptStarted(identity, id string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release(identity)
	if p.ids[identity] == nil {
		p.ids[identity] = map[string]time.Time{}
	}
	p.ids[identity][id] = now
}

// releaseReservation gives back a reservation that produced no prompt.
func (p *promptLimits) releaseReservation(identity string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release(identity)
}

func (p *promptLimits) release(identity string) {
	if p.reserved[identity] > 0 {
		p.reserved[identity]--
	}
	if p.reserved[identity] == 0 {
		delete(p.reserved, identity)
	}
}

// tracked returns every tracked prompt id.
func (p *promptLimits) tracked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.ids {
		for id := range m {
			out = append(out, id)
		}
	}
	return out
}

// settle forgets tracked prompts that are not in active (ComfyUI's running
// and pending queue). Only ids tracked before since are dropped, so a
// prompt submitted while the queue was being read is not lost.
func (p *promptLimits) settle(active map[string]bool, since time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ident, m := range p.ids {
		for id, t := range m {
			if !active[id] && t.Before(since) {
				delete(m, id)
			}
		}
		if len(m) == 0 {
			delete(p.ids, ident)
		}
	}
}

// running returns the number of tracked prompts per identity.
func (p *promptLimits) running() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for ident, m := range p.ids {
		out[ident] = len(m)
	}
	return out
}

// atLimit reports whether identity has no free prompt slot.
func (p *promptLimits) atLimit(identity string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max > 0 && len(p.ids[identity])+p.reserved[identity] >= p.max
}
