package caddyfile_test

import (
	"os"
	"regexp"
	"testing"
)

// caddyfileBlock is a fenced ```caddyfile code block in Markdown.
var caddyfileBlock = regexp.MustCompile("(?ms)^```caddyfile\n(.*?)^```")

// TestReadmeSnippetsAdapt adapts every Caddyfile snippet of the README as
// it is written there, so each one pastes into a Caddyfile and works.
func TestReadmeSnippetsAdapt(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := caddyfileBlock.FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```caddyfile blocks")
	}
	for i, b := range blocks {
		if _, err := adapt(t, string(b[1])); err != nil {
			t.Errorf("README.md caddyfile block %d does not adapt: %v\n%s", i+1, err, b[1])
		}
	}
}
