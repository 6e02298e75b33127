//! Units into groups: a group per service with prestart tasks waiting on the dependencies'
//! registered services, or one group holding every service as a task.
use std::collections::{BTreeMap, BTreeSet};

use super::model::{Cfg, Dns, Group, HostVolume, Lifecycle, NetMode, NetPort, Network, Resources, Task, Template};
use super::{warn, Cx, Driver, Unit};
use crate::convert::{dns_label, Rendered};

/// The shell loop of a wait task runs in a small container.
const WAIT_RESOURCES: Resources = Resources { cpu: Some(50), memory: Some(32), memory_max: None };

/// What running a group more than once means for its static ports and host volumes.
/// `who` names the service (`service web`) or the one group (`group app`).
fn count_notes(out: &mut Rendered, who: &str, count: u32, ports: &[NetPort], volumes: &BTreeMap<String, HostVolume>) {
    if count < 2 {
        return;
    }
    if let Some(p) = ports.iter().find_map(|p| p.static_port) {
        out.warnings.push(format!(
            "{who}: key ports: {count} allocations with static port {p}: each needs a client of its own"
        ));
    }
    for v in volumes.keys() {
        out.warnings.push(format!(
            "{who}: key volumes: {count} allocations mount host volume {v}: those on one client share its directory"
        ));
    }
}

/// A task that waits for something before the group's main tasks start.
fn wait_task(cx: &Cx, name: String, image: &str, script: String, template: Option<Template>) -> Task {
    Task {
        name,
        driver: cx.driver.name().into(),
        user: None,
        lifecycle: Some(Lifecycle { hook: "prestart", sidecar: false }),
        config: vec![
            ("image".into(), Cfg::Str(image.into())),
            ("command".into(), Cfg::Str("/bin/sh".into())),
            ("args".into(), Cfg::List(vec!["-c".into(), script])),
        ],
        env: BTreeMap::new(),
        templates: template.into_iter().collect(),
        volume_mounts: vec![],
        resources: Some(WAIT_RESOURCES),
        restart: None,
        kill_timeout: None,
        kill_signal: None,
    }
}

fn group_count(u: &Unit, count: Option<u32>) -> u32 {
    u.replicas.or(count).unwrap_or(1)
}

fn network(mode: NetMode, hostname: Option<String>, dns: Dns, ports: Vec<NetPort>) -> Option<Network> {
    (mode != NetMode::None).then(|| Network { mode, hostname, dns: (!dns.is_empty()).then_some(dns), ports })
}

/// One group per service; dependencies are waited for by prestart tasks that poll the
/// dependency's registered service.
pub(super) fn per_service(cx: &Cx, count: Option<u32>, units: Vec<Unit>, out: &mut Rendered) -> Vec<Group> {
    let image = cx.wait_image;
    let with_ports: BTreeMap<String, bool> = units.iter().map(|u| (u.name.clone(), u.service.is_some())).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for u in &units {
        for v in u.volumes.keys() {
            users.entry(v).or_default().push(&u.name);
        }
    }
    for (v, us) in users.into_iter().filter(|(_, us)| us.len() > 1) {
        out.warnings.push(format!(
            "job: volume {v} is mounted by the groups {}: each allocation gets the host volume of its own client, shared only on the same client",
            us.join(", ")
        ));
    }
    if units.len() > 1 && units.iter().any(|u| u.service.is_some()) {
        out.warnings.push("job: each service is a group of its own: they reach each other through the registered services (nomadService or Consul service templates, Consul DNS), not by compose service name".into());
    }
    let mut groups = Vec::new();
    for u in units {
        let mut tasks = Vec::new();
        for (dep, cond) in &u.deps {
            let key = format!("depends_on.{dep}");
            if cond == "service_completed_successfully" {
                warn(out, &u.name, &key, "service_completed_successfully: a group cannot wait for another group to finish; started without waiting");
                continue;
            }
            match with_ports.get(dep) {
                None => {
                    warn(out, &u.name, &key, "the dependency is not part of the job; started without waiting");
                    continue;
                }
                Some(false) => {
                    warn(out, &u.name, &key, "the dependency has no port to wait for; started without waiting");
                    continue;
                }
                Some(true) => {}
            }
            if cond == "service_healthy" && cx.provider != "consul" {
                warn(out, &u.name, &key, "service_healthy: waits until the dependency answers on its port (Nomad's service list does not filter on health; Consul's does)");
            }
            let svc_name = dns_label(dep);
            let lookup = if cx.provider == "consul" { "service" } else { "nomadService" };
            let file = format!("local/{svc_name}.addr");
            let template = Template {
                data: format!(
                    "{{{{ range {lookup} \"{svc_name}\" }}}}{{{{ .Address }}}} {{{{ .Port }}}}\n{{{{ end }}}}"
                ),
                destination: file.clone(),
                env: false,
                change_mode: "noop",
                perms: None,
                uid: None,
                gid: None,
            };
            let script = format!(
                "until [ -s /{file} ] && {}; do sleep 2; done",
                super::super::tcp_probe(&format!("$(head -n 1 /{file})"))
            );
            let mut tname = format!("wait-for-{svc_name}");
            if tname == u.name {
                tname.push_str("-dep");
            }
            tasks.push(wait_task(cx, tname, image, script, Some(template)));
        }
        let count = group_count(&u, count);
        tasks.push(u.task);
        count_notes(out, &format!("service {}", u.name), count, &u.ports, &u.volumes);
        groups.push(Group {
            name: u.name,
            count,
            network: network(u.mode, u.hostname, u.dns, u.ports),
            volumes: u.volumes,
            never_reschedule: u.restart.as_ref().is_some_and(|r| r.mode == Some("fail")),
            restart: u.restart,
            services: u.service.into_iter().collect(),
            tasks,
        });
    }
    groups
}

/// Every service a task of one group. The tasks share one network namespace: dependencies
/// start first as prestart tasks, and waits poll their port on localhost.
pub(super) fn single_group(cx: &Cx, id: &str, count: Option<u32>, units: Vec<Unit>, out: &mut Rendered) -> Vec<Group> {
    let image = cx.wait_image;
    let names: BTreeSet<String> = units.iter().map(|u| u.name.clone()).collect();
    let first_port: BTreeMap<String, Option<u16>> =
        units.iter().map(|u| (u.name.clone(), u.targets.first().copied())).collect();
    // How each dependency must start: true = run to completion.
    let mut prestart: BTreeMap<String, bool> = BTreeMap::new();
    for u in &units {
        for (dep, cond) in &u.deps {
            if names.contains(dep) {
                let done = cond == "service_completed_successfully";
                *prestart.entry(dep.clone()).or_insert(done) &= done;
            }
        }
    }
    let group_count = count.unwrap_or(1);
    let mode = units.iter().map(|u| u.mode).find(|m| *m != NetMode::Bridge).unwrap_or(NetMode::Bridge);
    let (mut ports, mut dns, mut hostname) = (Vec::new(), Dns::default(), None::<String>);
    let mut volumes = BTreeMap::new();
    let mut services = Vec::new();
    let mut waits: Vec<Task> = Vec::new();
    let mut tasks = Vec::new();
    let mut listening: BTreeMap<(u16, bool), String> = BTreeMap::new();
    for mut u in units {
        if u.mode != mode {
            out.lose(
                &u.name,
                "network_mode",
                &format!("one group has one network mode: {} is used, not {}", mode.as_str(), u.mode.as_str()),
                true,
                cx.allow,
            );
        }
        if let Some(r) = u.replicas.filter(|r| *r != group_count) {
            warn(out, &u.name, "deploy.replicas", &format!("{r}: one group runs every service {group_count} time(s)"));
        }
        for (p, t) in u.ports.iter().zip(&u.targets) {
            // Container ports share the namespace; static ports the host.
            for key in [(*t, false), (p.static_port.unwrap_or(0), true)] {
                if key.0 == 0 {
                    continue;
                }
                if let Some(other) = listening.get(&key) {
                    let what = if key.1 { "host port" } else { "port" };
                    out.lose(
                        &u.name,
                        "ports",
                        &format!("{what} {} is also {other}'s: one group shares one network namespace", key.0),
                        true,
                        cx.allow,
                    );
                } else {
                    listening.insert(key, u.name.clone());
                }
            }
        }
        ports.append(&mut u.ports);
        if let Some(h) = u.hostname.take() {
            match &hostname {
                Some(o) if *o != h => {
                    warn(out, &u.name, "hostname", &format!("one group has one hostname: {o} is used"))
                }
                _ => hostname = Some(h),
            }
        }
        for (list, mine) in
            [(&mut dns.servers, u.dns.servers), (&mut dns.searches, u.dns.searches), (&mut dns.options, u.dns.options)]
        {
            for v in mine {
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        }
        volumes.append(&mut u.volumes);
        if let Some(mut s) = u.service.take() {
            s.task = u.name.clone();
            services.push(s);
        }
        let mut task = u.task;
        task.restart = u.restart;
        if let Some(done) = prestart.get(&u.name) {
            task.lifecycle = Some(Lifecycle { hook: "prestart", sidecar: !done });
            if u.deps.iter().any(|(d, _)| names.contains(d)) {
                warn(out, &u.name, "depends_on", "a dependency that has dependencies: in one group they all start as prestart tasks, in no order among themselves");
            }
        }
        for (dep, cond) in &u.deps {
            let key = format!("depends_on.{dep}");
            if !names.contains(dep) {
                warn(out, &u.name, &key, "the dependency is not part of the job; started without waiting");
                continue;
            }
            if prestart.get(dep) == Some(&true) {
                continue;
            }
            let Some(Some(port)) = first_port.get(dep) else {
                if cond == "service_healthy" {
                    warn(
                        out,
                        &u.name,
                        &key,
                        "service_healthy: the dependency has no port to wait for; it is only started first",
                    );
                }
                continue;
            };
            if cond == "service_healthy" {
                warn(out, &u.name, &key, "service_healthy: waits until the dependency answers on its port");
            }
            let tname = format!("wait-for-{}", dns_label(dep));
            if !waits.iter().any(|w| w.name == tname) && !names.contains(&tname) {
                let script =
                    format!("until {}; do sleep 2; done", super::super::tcp_probe(&format!("127.0.0.1 {port}")));
                waits.push(wait_task(cx, tname, image, script, None));
            }
        }
        tasks.push(task);
    }
    if tasks.len() > 1 && mode == NetMode::Bridge {
        match cx.driver {
            // Compose's service names, as docker's /etc/hosts in the shared namespace.
            Driver::Docker => {
                for t in &mut tasks {
                    let mut hosts: Vec<String> =
                        names.iter().filter(|n| **n != t.name).map(|n| format!("{n}:127.0.0.1")).collect();
                    match t.config.iter_mut().find(|(k, _)| k == "extra_hosts") {
                        Some((_, Cfg::List(l))) => l.append(&mut hosts),
                        _ => t.config.push(("extra_hosts".into(), Cfg::List(hosts))),
                    }
                }
            }
            Driver::Podman => out.warnings.push("job: the services share one network namespace: they reach each other on localhost, not by compose service name".into()),
        }
    }
    waits.append(&mut tasks);
    count_notes(out, &format!("group {id}"), group_count, &ports, &volumes);
    vec![Group {
        name: id.to_string(),
        count: group_count,
        network: network(mode, hostname, dns, ports),
        volumes,
        restart: None,
        never_reschedule: false,
        services,
        tasks: waits,
    }]
}
