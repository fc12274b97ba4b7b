package testenv

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/zguard/zguard/comfy/fakecomfy/fakeimage"
)

// ImageSpec describes a fake-ComfyUI image variant (see fakeimage.Spec).
type ImageSpec = fakeimage.Spec

// FakeComfyImage builds the fake ComfyUI image described by spec (Docker
// required) and returns its tag. Building the same tag twice per process is
// cheap: the binary is cached and the daemon reuses layers.
func FakeComfyImage(t testing.TB, spec ImageSpec) string {
	t.Helper()
	Require(t, Docker)
	if spec.Tag == "" {
		spec.Tag = "zguard-fakecomfy:test"
	}
	bin := Binary(t, "fakecomfy")
	if err := fakeimage.Build(bin, spec); err != nil {
		t.Fatalf("building image %s: %v", spec.Tag, err)
	}
	return spec.Tag
}

// RemoveImage deletes an image tag, ignoring "not found".
func RemoveImage(cli *client.Client, tag string) {
	_, _ = cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
}
