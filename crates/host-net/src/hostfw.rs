//! Other firewalls on the host that would drop hv's forwarded traffic. In nftables every base
//! chain on the forward hook must accept a packet, so an `accept` in hv's table cannot overrule
//! another table's `policy drop` (Docker's iptables-nft `FORWARD`, for example): `hv host
//! check` reports such chains and what to add to them.

use crate::NetError;

/// A base chain outside hv's tables that drops forwarded packets by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardBlocker {
    /// `ip`, `inet`, … (`ip` tables are iptables-nft's).
    pub family: String,
    pub table: String,
    pub chain: String,
}

impl ForwardBlocker {
    /// What lets `bridge`'s traffic through this chain, in the tool that owns it.
    pub fn advice(&self, bridge: &str) -> String {
        let (t, c) = (&self.table, &self.chain);
        if self.family == "ip" && t == "filter" {
            format!(
                "iptables chain {c} drops forwarded traffic: allow hv's bridge with \
                 `iptables -I {c} -i {bridge} -j ACCEPT; iptables -I {c} -o {bridge} -j ACCEPT` \
                 (with Docker, insert into DOCKER-USER instead)"
            )
        } else {
            format!(
                "nft chain {fam} {t} {c} drops forwarded traffic: allow hv's bridge with \
                 `nft insert rule {fam} {t} {c} iifname {bridge} accept; \
                 nft insert rule {fam} {t} {c} oifname {bridge} accept`",
                fam = self.family
            )
        }
    }
}

/// The forward-hook base chains with `policy drop` in `nft -j list chains` output, except
/// hv's own tables (`hv-…`).
pub fn parse_forward_blockers(json: &str) -> Vec<ForwardBlocker> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let items = v.get("nftables").and_then(|n| n.as_array());
    items
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("chain"))
        .filter(|c| {
            c.get("hook").and_then(|h| h.as_str()) == Some("forward")
                && c.get("policy").and_then(|p| p.as_str()) == Some("drop")
        })
        .filter_map(|c| {
            let s = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
            Some(ForwardBlocker {
                family: s("family")?,
                table: s("table")?,
                chain: s("name")?,
            })
        })
        .filter(|b| !b.table.starts_with("hv-"))
        .collect()
}

/// The chains that would drop traffic forwarded to and from hv's NAT networks (see
/// [`parse_forward_blockers`]). Explicit drop rules inside accepting chains are not detected.
pub async fn forward_blockers() -> Result<Vec<ForwardBlocker>, NetError> {
    let out = host_exec::run(
        "nft",
        &["-j".as_ref(), "list".as_ref(), "chains".as_ref()],
        std::time::Duration::from_secs(10),
    )
    .await?;
    Ok(parse_forward_blockers(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dropping_forward_chains_of_other_tables() {
        // Recorded from nft 1.0.6: iptables-nft's filter table with FORWARD policy drop, hv's
        // own table and an accepting firewalld-style chain.
        let json = include_str!("../tests/data/chains-forward-drop.json");
        let got = parse_forward_blockers(json);
        assert_eq!(
            got,
            [ForwardBlocker {
                family: "ip".into(),
                table: "filter".into(),
                chain: "FORWARD".into()
            }]
        );
        assert!(got[0]
            .advice("hvbr-default")
            .contains("iptables -I FORWARD -i hvbr-default -j ACCEPT"));
        assert!(parse_forward_blockers("not json").is_empty());
        assert!(parse_forward_blockers(r#"{"nftables": []}"#).is_empty());
    }
}
