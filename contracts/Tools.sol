// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {JobStatus, JobDefinition, ProviderPrices, Label} from "./Types.sol";
import {SameStatusError, JobHotStatusOnly, InvalidTransition} from "./Errors.sol";

/// @title Tools
/// @notice The job status machine and the pricing math, shared by JobRepository and MetaScheduler.
/// @dev Deployed once and linked: its external functions run through DELEGATECALL.
library Tools {
    /// @notice True for PENDING, META_SCHEDULED, SCHEDULED and RUNNING.
    function isHot(JobStatus status) internal pure returns (bool) {
        return status <= JobStatus.RUNNING;
    }

    /// @notice Reverts unless `from -> to` is a legal transition; the checks run in the protocol's order.
    function checkNewJobStatus(JobStatus from, JobStatus to) external pure {
        if (from == to) revert SameStatusError();
        if (!isHot(from)) revert JobHotStatusOnly(from);
        if (to == JobStatus.PANICKED) return;
        if (from == JobStatus.PENDING) {
            if (to == JobStatus.META_SCHEDULED || to == JobStatus.CANCELLED) return;
        } else if (from == JobStatus.META_SCHEDULED) {
            if (to == JobStatus.PENDING || to == JobStatus.SCHEDULED || to == JobStatus.CANCELLED) return;
        } else if (from == JobStatus.SCHEDULED) {
            if (
                to == JobStatus.PENDING || to == JobStatus.RUNNING || to == JobStatus.CANCELLED
                    || to == JobStatus.FAILED
            ) return;
        } else {
            // RUNNING
            if (
                to == JobStatus.FINISHED || to == JobStatus.FAILED || to == JobStatus.CANCELLED
                    || to == JobStatus.OUT_OF_CREDITS
            ) return;
        }
        revert InvalidTransition(from, to);
    }

    /// @notice Credit-wei per minute that a job costs on a provider with these prices.
    function creditsPerMin(JobDefinition memory definition, ProviderPrices memory prices)
        external
        pure
        returns (uint256)
    {
        uint256 cpus = uint256(definition.cpusPerTask);
        uint256 perTask = cpus * prices.cpuPricePerMin + cpus * uint256(definition.memPerCpu) * prices.memPricePerMin;
        return uint256(definition.ntasks) * perTask + uint256(definition.gpus) * prices.gpuPricePerMin;
    }

    /// @notice Whole minutes that `credits` buy at `perMin`; a free job gets the largest duration.
    function durationMinute(uint256 credits, uint256 perMin) external pure returns (uint64) {
        if (perMin == 0) return type(uint64).max;
        uint256 minutes_ = credits / perMin;
        return minutes_ > type(uint64).max ? type(uint64).max : uint64(minutes_);
    }

    /// @notice A definition is valid when it asks for at least one task, one CPU and some memory.
    function isValidDefinition(JobDefinition memory definition) external pure returns (bool) {
        return definition.ntasks > 0 && definition.cpusPerTask > 0 && definition.memPerCpu > 0;
    }

    /// @notice Copies labels from memory to storage (the compiler cannot copy struct arrays in one step).
    function copyLabels(Label[] storage target, Label[] memory source) internal {
        while (target.length > 0) target.pop();
        for (uint256 i = 0; i < source.length; i++) {
            target.push(source[i]);
        }
    }
}
