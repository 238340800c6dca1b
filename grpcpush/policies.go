package grpcpush

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/leastrequest"
	"google.golang.org/grpc/balancer/roundrobin"
	"google.golang.org/grpc/serviceconfig"
)

// The balancers a Handler's ClientConn can use: grpc-go's own round_robin
// and least_request, each unchanged behind the observer of balancer.go. The
// observer records states and calls and, with passive health checks,
// reports an endpoint that is out as unhealthy to the child (health.go).
var policies = map[string]observerBuilder{
	LBRoundRobin: {name: "metrics_gateway_round_robin", child: roundrobin.Name},
	// least_request samples choiceCount endpoints at random and sends the
	// call to the one with the fewest calls in flight (gRFC A48); 2 is the
	// classic "power of two choices" and grpc-go's default.
	LBLeastConn: {name: "metrics_gateway_least_conn", child: leastrequest.Name, childConfig: `{"choiceCount":2}`},
}

func init() {
	for _, b := range policies {
		balancer.Register(b)
	}
}

// balancerFor returns the registered name of the balancer for an LB policy.
func balancerFor(policy string) string { return policies[policy].name }

// parseChildConfig parses the child's balancer config once, at Build: the
// service config names the observer, so gRPC hands the observer its own
// (empty) config and the child's must be made here.
func (b observerBuilder) parseChildConfig() (serviceconfig.LoadBalancingConfig, error) {
	if b.childConfig == "" {
		return nil, nil
	}
	parser, ok := balancer.Get(b.child).(balancer.ConfigParser)
	if !ok {
		return nil, fmt.Errorf("balancer %s takes no config", b.child)
	}
	return parser.ParseConfig(json.RawMessage(b.childConfig))
}
