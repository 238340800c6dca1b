package orgid

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, v := range []string{"team-a", "a|b", "a|b|c", "(x)*!'_.-", strings.Repeat("a", 150), "123456:product=k6", "a:k=v|b"} {
		if err := Check(v); err != nil {
			t.Errorf("Check(%q) = %v, want nil", v, err)
		}
	}
	for v, want := range map[string]string{
		"":                       "empty",
		strings.Repeat("a", 151): "too long: max 150",
		"a/b":                    "unsupported character '/'",
		"a|b/c":                  "unsupported character '/'",
		"a||b":                   "empty",
		"a|":                     "empty",
		".":                      "'.' or '..'",
		"a|..":                   "'.' or '..'",
		"a b":                    "unsupported character ' '",
		"a\x00":                  "not printable ASCII",
		"caf\xc3\xa9":            "not printable ASCII",
	} {
		err := Check(v)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check(%q) = %v, want an error with %q", v, err, want)
		}
	}
}

func TestCheckDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = Check("team-a|team-b") }); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}
