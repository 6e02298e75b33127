/// Messages the coordinator's REST API serves as JSON (feature `api`: serde + an OpenAPI
/// schema derived from the same type). Agents build without the feature.
const API_MESSAGES: &[&str] = &[
    "TargetStatus",
    "TargetList",
    "ReleaseInfo",
    "Deployment",
    "DeploymentList",
    "DeploymentDetail",
    "AgentInfo",
    "AgentList",
    "DeployTestReport",
    "DeployPlan",
    "FileChange",
    "ServiceChange",
    "Event",
    "EventList",
    "DeployEvent",
    "DiskUsage",
    "Facts",
    "Runtime",
    "ApiTokenInfo",
    "ApiTokenList",
    "FleetTarget",
    "FleetDeployInfo",
    "FleetDeployList",
    "CheckReport",
    "TargetCheck",
    "CheckItem",
    "RollbackPlanList",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The proto is the single source of truth for the wire; neither tool prints rerun-if-changed.
    println!("cargo:rerun-if-changed=../proto");
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let mut b = tonic_prost_build::configure().btree_map(".");
    for m in API_MESSAGES {
        b = b.type_attribute(
            format!(".dockfra.v1.{m}"),
            "#[cfg_attr(feature = \"api\", derive(serde::Serialize, utoipa::ToSchema))]",
        );
    }
    b.compile_protos(&["../proto/dockfra/v1/dockfra.proto"], &["../proto"])?;
    Ok(())
}
