// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {JobStatus} from "./Types.sol";

// The protocol's custom errors. Clients decode reverts with these exact signatures.

error AlreadyDone();
error ArrayLengthMismatch();
error Banned();
error CustomerMetaSchedulerProviderOnly();
error CustomerOnly(address current, address expected);
error Empty();
error InsufficientFunds(uint256 available, uint256 required);
error InvalidJob();
error InvalidJobDefinition();
error InvalidNodesCount();
error InvalidTotalCpus();
error InvalidTotalMem();
error InvalidTransition(JobStatus from, JobStatus to);
error JobHotStatusOnly(JobStatus current);
error JobProviderOnly(address current, address expected);
error MetaScheduledScheduledStatusOnly(JobStatus current);
error NewJobRequestDisabled();
error NoJob();
error NoProvider();
error NoSpendingAuthority();
error OutOfBounds();
error ProviderNotJoined();
error RemainingTimeAboveLimit(uint256 remaining, uint256 limit);
error RunningColdStatusOnly(JobStatus current);
error RunningScheduledStatusOnly(JobStatus current);
error SameStatusError();
error WaitingApprovalOnly();
