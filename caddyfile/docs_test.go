package caddyfile_test

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDocsSnippetsAdapt adapts every Caddyfile snippet of docs/*.md as it
// is written there, as TestReadmeSnippetsAdapt does for the README.
func TestDocsSnippetsAdapt(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range caddyfileBlock.FindAllSubmatch(doc, -1) {
			n++
			if _, err := adapt(t, string(b[1])); err != nil {
				t.Errorf("%s caddyfile block %d does not adapt: %v\n%s", filepath.Base(f), i+1, err, b[1])
			}
		}
	}
	if n == 0 {
		t.Fatal("docs/*.md have no ```caddyfile blocks")
	}
}
