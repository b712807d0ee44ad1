// cnidriver drives a CNI network configuration list through libcni, the
// library containerd and CRI-O use, for one container: the runtime side of
// Switchyard's compatibility tests.
//
//	cnidriver ADD|CHECK|DEL <conflist> <container-id> <netns> <ifname> <cache-dir> <plugin-dir>...
//
// Capability arguments (portMappings, bandwidth) come from CNIDRIVER_CAPS as JSON.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) < 8 {
		fmt.Fprintln(os.Stderr, "usage: cnidriver ADD|CHECK|DEL <conflist> <container-id> <netns> <ifname> <cache-dir> <plugin-dir>...")
		os.Exit(2)
	}
	cmd, path, id, netns, ifname, cache := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the conflist:", err)
		os.Exit(1)
	}
	cn := libcni.NewCNIConfigWithCacheDir(os.Args[7:], cache, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}},
	}
	if caps := os.Getenv("CNIDRIVER_CAPS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fmt.Fprintln(os.Stderr, "CNIDRIVER_CAPS:", err)
			os.Exit(2)
		}
	}
	ctx := context.Background()
	switch cmd {
	case "ADD":
		res, err := cn.AddNetworkList(ctx, list, rt)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ADD:", err)
			os.Exit(1)
		}
		if err := res.Print(); err != nil {
			fmt.Fprintln(os.Stderr, "printing the result:", err)
			os.Exit(1)
		}
	case "CHECK":
		if err := cn.CheckNetworkList(ctx, list, rt); err != nil {
			fmt.Fprintln(os.Stderr, "CHECK:", err)
			os.Exit(1)
		}
	case "DEL":
		if err := cn.DelNetworkList(ctx, list, rt); err != nil {
			fmt.Fprintln(os.Stderr, "DEL:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", cmd)
		os.Exit(2)
	}
}
