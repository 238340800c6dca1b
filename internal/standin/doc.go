// Package standin provides small, realistic stand-ins for the Grafana Mimir
// peers the gateway talks to, so that tests, the local demo and the benchmarks
// exercise real protocols on loopback instead of mocks:
//
//   - [Distributor]: an http.Handler that answers /api/v1/push like Mimir's
//     distributor (snappy Remote-Write 1.0 and 2.0, the same status codes and
//     -Written headers), counts what it receives and can be told to misbehave.
//   - [GRPCServer]: serves any http.Handler over gRPC exactly as a Mimir
//     component does (dskit's httpgrpc server, dskit's tenant interceptor and
//     Mimir's server limits), optionally several on 127.0.0.2, .3, ... sharing
//     one port, like the pods behind a headless Service. [WithMimirCodec]
//     makes it decode requests as a Mimir process does rather than with
//     grpc-go's default codec.
//   - [DNSServer]: a real DNS server (UDP and TCP) on 127.0.0.1 whose A/AAAA
//     answers can be changed at run time, like a headless Service's records.
//   - [RemoteWriteBody] and [RemoteWriteV2Body]: realistic push bodies.
//   - [ErrorDetailsStatus]: the gRPC statuses Mimir's ingestion path returns,
//     carrying a cortexpb.ErrorDetails detail.
//
// Protocol messages are encoded and decoded by hand with protowire so that the
// package depends neither on Prometheus nor on Mimir (whose code is AGPL).
package standin
