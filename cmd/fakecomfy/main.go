// Command fakecomfy runs the fake ComfyUI server (package comfy/fakecomfy)
// that stands in for the real image in tests, the demo and benchmarks.
//
// In an image built FROM scratch it is also its own health probe:
// `fakecomfy -probe URL` exits 0 when URL answers 200.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/zguard/zguard/comfy/fakecomfy"
	"github.com/zguard/zguard/comfy/fakecomfy/fakeimage"
)

func main() {
	listen := flag.String("listen", "0.0.0.0", "address to listen on (ComfyUI's --listen)")
	port := flag.Int("port", 8188, "port (ComfyUI's --port)")
	out := flag.String("output-directory", "/root/ComfyUI/output", "output directory (ComfyUI's --output-directory)")
	version := flag.String("version", "v1", "version reported in /system_stats")
	unhealthy := flag.Bool("unhealthy", false, "answer /system_stats with 500")
	exitAfter := flag.Duration("exit-after", 0, "exit after this long (0 = never)")
	exitCode := flag.Int("exit-code", 3, "exit code used with -exit-after")
	startupDelay := flag.Duration("startup-delay", 0, "wait this long before listening")
	stepTime := flag.Duration("step-time", 50*time.Millisecond, "time one sampler step takes")
	probe := flag.String("probe", "", "health-probe mode: GET this URL, exit 0 on 200")
	buildImage := flag.String("build-image", "", "build a FROM-scratch image holding this binary, tagged TAG, and exit; arguments after -- become its CMD")
	alloc := flag.Int64("alloc-mib", 0, "allocate and touch this many MiB of RAM at start (to provoke the kernel's OOM killer)")
	flag.Parse()

	if *buildImage != "" {
		self, err := os.Executable()
		if err == nil {
			err = fakeimage.Build(self, fakeimage.Spec{Tag: *buildImage, Args: flag.Args()})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakecomfy: building image:", err)
			os.Exit(1)
		}
		fmt.Println("built", *buildImage)
		return
	}

	if *probe != "" {
		os.Exit(runProbe(*probe))
	}
	if v := os.Getenv("FAKECOMFY_VERSION"); v != "" && !isFlagSet("version") {
		*version = v
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.Printf("fakecomfy %s starting (pid %d)", *version, os.Getpid())
	if *exitAfter > 0 {
		go func() {
			time.Sleep(*exitAfter)
			log.Printf("exiting with code %d as asked (-exit-after)", *exitCode)
			os.Exit(*exitCode)
		}()
	}
	if *alloc > 0 {
		ballast = make([]byte, *alloc<<20)
		for i := 0; i < len(ballast); i += 4096 {
			ballast[i] = 1
		}
		log.Printf("allocated %d MiB", *alloc)
	}
	time.Sleep(*startupDelay)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Printf("creating output directory: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := fakecomfy.New(fakecomfy.Options{OutputDir: *out, Version: *version, StepTime: *stepTime, Unhealthy: *unhealthy})
	go srv.Run(ctx)
	hs := &http.Server{Addr: net.JoinHostPort(*listen, strconv.Itoa(*port)), Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	log.Printf("To see the GUI go to: http://%s", hs.Addr)
	if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// ballast keeps -alloc-mib memory reachable for the life of the process.
var ballast []byte

func isFlagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

func runProbe(url string) int {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}
