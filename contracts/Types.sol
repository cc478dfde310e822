// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

// The protocol's data types. Field order is part of the ABI: never reorder, only append new types.

/// PENDING..RUNNING are hot (the job may still change); CANCELLED..PANICKED are cold (terminal, settled).
enum JobStatus {
    PENDING,
    META_SCHEDULED,
    SCHEDULED,
    RUNNING,
    CANCELLED,
    FINISHED,
    FAILED,
    OUT_OF_CREDITS,
    PANICKED
}

/// Where the job's output goes, as DeepSquare's clients set `JobDefinition.storageType`: DeepSquare's
/// transfer service, another HTTP upload endpoint, S3, a custom store, or no output at all.
enum StorageType {
    TRANSFER,
    HTTP,
    S3,
    CUSTOM,
    NONE
}

struct Label {
    string key;
    string value;
}

/// A constraint on a provider label: `op` is "==", "!=", "<", "<=", ">" or ">=" as two bytes ("<\0" for "<").
struct Affinity {
    Label label;
    bytes2 op;
}

struct JobDefinition {
    uint64 gpus;
    uint64 memPerCpu;
    uint64 cpusPerTask;
    uint64 ntasks;
    string batchLocationHash;
    /// A StorageType value. Declared uint8 (the same ABI type as the enum) so that an unknown value
    /// reaches the contract and is refused with InvalidJobDefinition() instead of an empty revert.
    uint8 storageType;
    Label[] uses;
    Affinity[] affinity;
}

struct JobCost {
    uint256 maxCost;
    uint256 finalCost;
    uint256 pendingTopUp;
    bool delegateSpendingAuthority;
}

struct JobTime {
    uint256 submit;
    uint256 start;
    uint256 end;
    uint256 cancelRequestTimestamp;
    uint256 blockNumberStateChange;
    uint256 panicTimestamp;
}

struct Job {
    bytes32 jobId;
    JobStatus status;
    address customerAddr;
    address providerAddr;
    JobDefinition definition;
    JobCost cost;
    JobTime time;
    bytes32 jobName;
    bool hasCancelRequest;
    string lastError;
    int64 exitCode;
}

struct ProviderHardware {
    uint64 nodes;
    uint64[] gpusPerNode;
    uint64[] cpusPerNode;
    uint64[] memPerNode;
}

/// Prices in credit-wei per unit-minute (memory in MB).
struct ProviderPrices {
    uint256 gpuPricePerMin;
    uint256 cpuPricePerMin;
    uint256 memPricePerMin;
}

struct Provider {
    address addr;
    ProviderHardware providerHardware;
    ProviderPrices providerPrices;
    Label[] labels;
    bool isBanned;
}
