package caddymodule

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// The `caddy metrics-gateway` command makes static tokens for
// access_policies and hashes them. It is registered here, in the module's
// package, so that every Caddy built with the plugin (xcaddy too) has it.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "metrics-gateway",
		Usage: "token | hash-token",
		Short: "Makes access policy tokens for metrics_gateway and their hashes",
		Long: `
Tools for metrics_gateway's access_policies.

  token       prints a new random token (256 bits, base64url: safe in URLs,
              headers and YAML) on its first line and its hash on the
              second. Give the token to the client (once), put the hash in
              a policy: token sha256:...
  hash-token  reads a token on standard input (its first line) and prints
              its hash, e.g. to check which hash belongs to a token:
              printf '%s' "$TOKEN" | caddy metrics-gateway hash-token
`,
		Func: func(fl caddycmd.Flags) (int, error) {
			return runMetricsGateway(fl.Args(), os.Stdin, os.Stdout)
		},
	})
}

// runMetricsGateway runs `caddy metrics-gateway <args>`.
func runMetricsGateway(args []string, stdin io.Reader, stdout io.Writer) (int, error) {
	if len(args) != 1 {
		return exitUsage, errors.New("usage: caddy metrics-gateway token | hash-token")
	}
	switch args[0] {
	case "token":
		return cmdToken(stdout)
	case "hash-token":
		return cmdHashToken(stdin, stdout)
	}
	return exitUsage, fmt.Errorf("unknown subcommand %q: want token or hash-token", args[0])
}

// exitUsage is the exit status of a command used wrongly.
const exitUsage = 2

// cmdToken prints a new token and its hash, one a line.
func cmdToken(stdout io.Writer) (int, error) {
	token, hash, err := access.NewToken()
	if err != nil {
		return 1, err
	}
	if _, err := fmt.Fprintf(stdout, "%s\n%s\n", token, hash); err != nil {
		return 1, err
	}
	return 0, nil
}

// maxTokenLine bounds the line hash-token reads.
const maxTokenLine = 64 << 10

// cmdHashToken reads a token (the first line of stdin, without the line
// end and surrounding blanks) and prints its hash.
func cmdHashToken(stdin io.Reader, stdout io.Writer) (int, error) {
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 0, 4096), maxTokenLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return 1, fmt.Errorf("reading the token from standard input: %v", err)
		}
		return 1, errors.New("no token on standard input")
	}
	token := strings.TrimSpace(sc.Text())
	if token == "" {
		return 1, errors.New("the token on standard input is empty")
	}
	if _, err := fmt.Fprintln(stdout, access.HashToken(token)); err != nil {
		return 1, err
	}
	return 0, nil
}
