// cnidriver drives a CNI network configuration list through libcni, the
// library containerd and CRI-O use: the runtime side of Switchyard's
// compatibility tests. It is built against the libcni pinned in go.mod
// (v1.3.0, which has GC and STATUS).
//
//	cnidriver ADD|CHECK|DEL <conflist> <container-id> <netns> <ifname> <cache-dir> <plugin-dir>...
//	cnidriver GC <conflist> <valid-attachments> <cache-dir> <plugin-dir>...
//	cnidriver STATUS <conflist> <cache-dir> <plugin-dir>...
//
// <valid-attachments> is JSON: [{"containerID": "...", "ifname": "eth0"}, ...].
// Capability arguments (portMappings, bandwidth, ips) come from CNIDRIVER_CAPS as JSON.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `usage:
  cnidriver ADD|CHECK|DEL <conflist> <container-id> <netns> <ifname> <cache-dir> <plugin-dir>...
  cnidriver GC <conflist> <valid-attachments JSON> <cache-dir> <plugin-dir>...
  cnidriver STATUS <conflist> <cache-dir> <plugin-dir>...`

func fail(code int, what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(code)
}

func main() {
	// How many arguments each verb needs before its plugin directories.
	need := map[string]int{"ADD": 7, "CHECK": 7, "DEL": 7, "GC": 5, "STATUS": 4}
	if len(os.Args) < 2 || need[os.Args[1]] == 0 || len(os.Args) < need[os.Args[1]]+1 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, path := os.Args[1], os.Args[2]
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		fail(1, "reading the conflist", err)
	}
	ctx := context.Background()
	switch cmd {
	case "GC":
		var valid []types.GCAttachment
		if err := json.Unmarshal([]byte(os.Args[3]), &valid); err != nil || valid == nil {
			fmt.Fprintln(os.Stderr, "the valid attachments must be a JSON list:", os.Args[3])
			os.Exit(2)
		}
		cn := libcni.NewCNIConfigWithCacheDir(os.Args[5:], os.Args[4], nil)
		if err := cn.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
			fail(1, "GC", err)
		}
		return
	case "STATUS":
		cn := libcni.NewCNIConfigWithCacheDir(os.Args[4:], os.Args[3], nil)
		if err := cn.GetStatusNetworkList(ctx, list); err != nil {
			fail(1, "STATUS", err)
		}
		return
	}
	id, netns, ifname, cache := os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	cn := libcni.NewCNIConfigWithCacheDir(os.Args[7:], cache, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}},
	}
	if caps := os.Getenv("CNIDRIVER_CAPS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fail(2, "CNIDRIVER_CAPS", err)
		}
	}
	switch cmd {
	case "ADD":
		res, err := cn.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(1, "ADD", err)
		}
		if err := res.Print(); err != nil {
			fail(1, "printing the result", err)
		}
	case "CHECK":
		if err := cn.CheckNetworkList(ctx, list, rt); err != nil {
			fail(1, "CHECK", err)
		}
	case "DEL":
		if err := cn.DelNetworkList(ctx, list, rt); err != nil {
			fail(1, "DEL", err)
		}
	}
}
