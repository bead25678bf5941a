//! Removing the proxy's nat rules when its cluster goes (`pod-runner cleanup`): the
//! jumps into its chains, then the chains. Only names with the cluster's `FS<N>-`
//! prefix are touched; safe to run twice and after a crash.

use std::process::Command;

use super::rules::Chains;

/// The iptables calls (arguments after `iptables -w -t nat`) that remove every
/// rule of chain prefix `chains` from `iptables-save -t nat` output.
pub fn commands(chains: &Chains, save: &str) -> Vec<Vec<String>> {
    let prefix = &chains.prefix;
    let jump = format!(" -j {prefix}");
    let mut out = Vec::new();
    // Jumps from chains that are not ours (the built-in hooks) first.
    for line in save.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        if rule.starts_with(prefix.as_str()) || !line.contains(&jump) {
            continue;
        }
        // Our own jumps carry no quoted words, so whitespace splitting is exact.
        let mut args = vec!["-D".to_owned()];
        args.extend(rule.split_whitespace().map(str::to_owned));
        out.push(args);
    }
    let ours: Vec<String> = super::rules::parse_chains(save)
        .into_iter()
        .filter(|c| c.starts_with(prefix.as_str()))
        .collect();
    out.extend(ours.iter().map(|c| vec!["-F".to_owned(), c.clone()]));
    out.extend(ours.iter().map(|c| vec!["-X".to_owned(), c.clone()]));
    out
}

/// Removes the cluster's proxy rules; returns what it removed, one line each.
pub fn run(cluster_index: u8) -> Vec<String> {
    let chains = Chains::new(cluster_index.into());
    let Ok(save) = Command::new("iptables-save").args(["-t", "nat"]).output() else {
        return Vec::new();
    };
    let save = String::from_utf8_lossy(&save.stdout);
    commands(&chains, &save)
        .into_iter()
        .filter(|args| {
            Command::new("iptables")
                .args(["-w", "-t", "nat"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|args| format!("iptables -t nat {}", args.join(" ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_this_clusters_jumps_and_chains_and_nothing_else() {
        let save = "\
*nat
:PREROUTING ACCEPT [0:0]
:FS3-SERVICES - [0:0]
:FS3-SVC-0A1B2C3D - [0:0]
:FS30-SERVICES - [0:0]
-A PREROUTING -d 10.214.3.0/24 -j FS3-SERVICES
-A PREROUTING -d 10.214.30.0/24 -j FS30-SERVICES
-A POSTROUTING -j FS3-POSTROUTING
-A FS3-SERVICES -d 10.214.3.20/32 -p tcp -m tcp --dport 80 -j FS3-SVC-0A1B2C3D
COMMIT
";
        let cmds: Vec<String> = commands(&Chains::new(3), save)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-D PREROUTING -d 10.214.3.0/24 -j FS3-SERVICES",
                "-D POSTROUTING -j FS3-POSTROUTING",
                "-F FS3-SERVICES",
                "-F FS3-SVC-0A1B2C3D",
                "-X FS3-SERVICES",
                "-X FS3-SVC-0A1B2C3D",
            ]
        );
    }
}
