//go:build race

package caddymodule_test

// raceEnabled tells tests that build binaries to build them with -race
// too, so that they reuse the packages this test binary was built from.
const raceEnabled = true
