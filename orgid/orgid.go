// Package orgid holds the one rule for X-Scope-OrgID values, the tenant
// header of Mimir, Cortex and GEM: which values the gateway passes on.
package orgid

import (
	"errors"
	"fmt"
	"strings"

	"github.com/grafana/dskit/tenant"
	"github.com/grafana/dskit/user"
)

// Header is the tenant header, as dskit names it.
const Header = user.OrgIDHeaderName

// Check applies Mimir's rules to an X-Scope-OrgID value: one tenant ID, or
// several joined by "|" (a federated read), each valid by dskit's
// tenant.ValidTenantID (1 to 150 characters of [a-zA-Z0-9!-_.*'()], not "."
// or "..") once dskit's optional ":key=value" metadata suffix is trimmed,
// as Mimir trims it. The whole value must be printable ASCII, the only
// bytes gRPC metadata can carry. It does not allocate for a valid value.
func Check(value string) error {
	if value == "" {
		return errors.New("tenant ID is empty")
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("tenant %q contains a byte that is not printable ASCII (0x%02x)", value, c)
		}
	}
	for rest := value; ; {
		part, more, found := strings.Cut(rest, "|")
		if err := CheckOne(tenant.TrimMetadata(part)); err != nil {
			return err
		}
		if !found {
			return nil
		}
		rest = more
	}
}

// CheckOne applies dskit's rules to a single tenant ID, and refuses an
// empty one (dskit's ValidTenantID accepts "").
func CheckOne(id string) error {
	if id == "" {
		return errors.New("tenant ID is empty")
	}
	return tenant.ValidTenantID(id)
}
