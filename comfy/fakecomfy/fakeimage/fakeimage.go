// Package fakeimage builds the fake ComfyUI image: FROM scratch, holding
// only the statically linked fakecomfy binary. Tests and the demo use it in
// place of the real multi-gigabyte ComfyUI image.
package fakeimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// Spec describes a fake-ComfyUI image variant. The image is built FROM
// scratch from cmd/fakecomfy; Args become its CMD and Env its ENV, so
// variants (slow to start, failing health, exiting at once) differ by flags.
type Spec struct {
	Tag         string
	Args        []string
	Env         map[string]string
	Healthcheck []string // e.g. {"CMD", "/fakecomfy", "-probe", "http://127.0.0.1:8188/system_stats"}
	Labels      map[string]string
}

// Build builds a FROM-scratch image holding the fakecomfy binary at
// /fakecomfy. It is used by tests and by the demo (cmd/fakecomfy -build-image).
func Build(binPath string, spec Spec) error {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	df := &strings.Builder{}
	df.WriteString("FROM scratch\nCOPY fakecomfy /fakecomfy\n")
	for k, v := range spec.Env {
		fmt.Fprintf(df, "ENV %s=%q\n", k, v)
	}
	for k, v := range spec.Labels {
		fmt.Fprintf(df, "LABEL %q=%q\n", k, v)
	}
	if len(spec.Healthcheck) > 0 {
		hc, _ := json.Marshal(spec.Healthcheck[1:])
		fmt.Fprintf(df, "HEALTHCHECK --interval=1s --timeout=2s --retries=3 %s %s\n", spec.Healthcheck[0], hc)
	}
	df.WriteString("EXPOSE 8188\nENTRYPOINT [\"/fakecomfy\"]\n")
	args := spec.Args
	if args == nil {
		args = []string{}
	}
	cmdJSON, _ := json.Marshal(args)
	fmt.Fprintf(df, "CMD %s\n", cmdJSON)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, []byte(df.String())}, {"fakecomfy", 0o755, bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	os.Unsetenv("DOCKER_API_VERSION")
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{spec.Tag}, Remove: true, ForceRemove: true, Version: build.BuilderV1})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return jsonmessage.DisplayJSONMessagesStream(resp.Body, io.Discard, 0, false, nil)
}
