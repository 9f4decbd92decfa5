//! Sharing services in the team's registry: the services marked
//! `share = true` are put under `[remote.etcd]`'s namespace on a lease
//! renewed a third of the way through it, on a thread of their own. A
//! clean stop revokes the lease (they vanish at once); a killed supervisor
//! or a sleeping laptop stops renewing it (they vanish within the lease).
//! A service the tunnel exposes is shared at its public URL, which the
//! sandbox can call, once the relay gave it one. A routed service (`route`)
//! is put under the namespace's routes instead, at its tunnel URL: the
//! sandbox's front port sends it only the requests with its route.

use std::sync::mpsc;
use std::time::Duration;

use devmesh::config::EtcdConfig;
use devmesh::remote::etcd::{Registration, RoutedCopy};

use crate::logs::Logs;
use crate::tunnel::client::TunnelState;

/// What is in etcd: shared services (name, URL), and routed copies.
type Registered = (Vec<(String, String)>, Vec<RoutedCopy>);

/// The sharing thread; dropped or stopped, it revokes the lease.
#[derive(Debug)]
pub struct Sharing {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sharing {
    /// Shares `services` (name, front URL) until stopped, those `tunnel`
    /// exposes at their public URL; and `routes`, each at its service's
    /// public URL once the tunnel has one (their `url` is not read).
    pub fn start(
        config: &EtcdConfig,
        services: Vec<(String, String)>,
        routes: Vec<RoutedCopy>,
        tunnel: tokio::sync::watch::Receiver<TunnelState>,
        logs: Logs,
    ) -> std::io::Result<Sharing> {
        let (stop, stopped) = mpsc::channel();
        let mut registration = Registration::new(config);
        let names = services
            .iter()
            .map(|(n, _)| n.clone())
            .chain(
                routes
                    .iter()
                    .map(|copy| format!("{} (route `{}`)", copy.service, copy.route)),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let namespace = config.namespace.clone();
        let thread = std::thread::Builder::new()
            .name("devmesh-share".into())
            .spawn(move || {
                let mut registered: Option<Registered> = None;
                let mut failures = 0u32;
                loop {
                    let wanted = {
                        let tunnel = tunnel.borrow();
                        let public = |name: &str| tunnel.urls.iter().find(|(n, _)| n == name).map(|(_, u)| u.clone());
                        let services: Vec<(String, String)> = services
                            .iter()
                            .map(|(name, front)| (name.clone(), public(name).unwrap_or_else(|| front.clone())))
                            .collect();
                        // A routed copy is reached through the tunnel only.
                        let routes: Vec<RoutedCopy> = routes
                            .iter()
                            .filter_map(|copy| {
                                Some(RoutedCopy {
                                    url: public(&copy.service)?,
                                    ..copy.clone()
                                })
                            })
                            .collect();
                        (services, routes)
                    };
                    // Routed copies wait for their tunnel URLs: look again soon.
                    let waiting = wanted.1.len() < routes.len();
                    let outcome = if registered.as_ref() == Some(&wanted) {
                        registration.renew().map(|alive| (alive, false))
                    } else {
                        // New, or a URL changed: on a lease of its own.
                        let _ = registration.revoke();
                        registration
                            .register_with_routes(&wanted.0, &wanted.1)
                            .map(|()| (true, true))
                    };
                    match outcome {
                        Ok((true, first)) => {
                            if first || failures > 0 {
                                logs.note(format!("shared in etcd under `{namespace}`: {names}"));
                            }
                            registered = Some(wanted);
                            failures = 0;
                        }
                        // Its lease ran out (the laptop slept): again.
                        Ok((false, _)) => registered = None,
                        Err(e) => {
                            if failures == 0 {
                                logs.note(format!("could not share {names} in etcd: {e}; trying again"));
                            }
                            registered = None;
                            failures += 1;
                        }
                    }
                    let wait = match failures {
                        // The tunnel's URLs may come: look again soon.
                        0 if waiting
                            || (!services.is_empty()
                                && !tunnel.borrow().connected
                                && !tunnel.borrow().relay.is_empty()) =>
                        {
                            Duration::from_secs(1).min(registration.every())
                        }
                        0 => registration.every(),
                        n => Duration::from_millis(500)
                            .saturating_mul(1 << n.min(5))
                            .min(registration.every()),
                    };
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => {
                            let _ = registration.revoke();
                            return;
                        }
                    }
                }
            })?;
        Ok(Sharing {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Revokes the lease, and waits until it is done.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        // The thread revokes the lease on its own.
        self.stop.take();
    }
}
