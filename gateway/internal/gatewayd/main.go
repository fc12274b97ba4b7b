// Command gatewayd runs only zguard's gateway, for bench/gateway.sh: the
// same code the agent runs, without Docker supervision or a firewall (bans
// are enforced in-process). With -attack it is instead the brute-force
// client: it sends wrong Basic passwords, each one different, from a given
// loopback source address.
package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/gateway"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "gateway listen address")
	upstream := flag.String("upstream", "http://127.0.0.1:8188", "ComfyUI")
	htpasswd := flag.String("htpasswd", "", "htpasswd file")
	audit := flag.String("audit", "", "audit log (empty: none)")
	failures := flag.Int("lockout", 5, "lockout failures (0 = off)")
	attack := flag.String("attack", "", "attack mode: URL to send wrong passwords to")
	n := flag.Int("n", 1000, "attack: attempts")
	conc := flag.Int("c", 20, "attack: concurrent connections")
	src := flag.String("src", "127.0.0.9", "attack: source address")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here until exit")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if *attack != "" {
		os.Exit(runAttack(*attack, *n, *conc, *src))
	}
	cfg := config.Defaults().Gateway
	cfg.Enabled = true
	cfg.Listen = []string{*listen}
	cfg.Upstream = *upstream
	cfg.Htpasswd = *htpasswd
	cfg.Tokens = ""
	cfg.AuditLog = *audit
	cfg.Lockout.Failures = *failures
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	g := gateway.New(gateway.Deps{Log: log})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := g.Apply(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "gatewayd:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_ = g.Run(ctx)
}

// runAttack sends n requests with distinct wrong passwords and prints how
// they were answered.
func runAttack(url string, n, conc int, src string) int {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: conc}}
	var next, refused, unauthorized, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "bench:guess-%06d", i)))
				resp, err := c.Do(req)
				switch {
				case err != nil:
					refused.Add(1)
				case resp.StatusCode == http.StatusUnauthorized:
					unauthorized.Add(1)
				default:
					other.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("attempts=%d unauthorized=%d refused_or_banned=%d other=%d wall=%.2fs\n", n, unauthorized.Load(), refused.Load(), other.Load(), time.Since(start).Seconds())
	return 0
}
