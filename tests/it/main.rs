//! One integration binary against real peers: Debian hosts with sshd in containers, a real
//! dockerd inside them, a real distribution registry, and the local Docker engine for the lab.

mod aws;
mod aws_twin;
mod bare_metal;
mod cli;
mod deploy;
mod deploy_fixture;
mod errors;
mod etcd;
mod etcd_fixture;
mod faults;
mod gke;
mod http_proxy;
mod https;
mod k3s;
mod kubernetes;
mod lab;
mod serve;
mod ssh;
mod support;
mod walkthrough;
