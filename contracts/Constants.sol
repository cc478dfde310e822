// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {OutOfBounds} from "./Errors.sol";

/// @title Constants
/// @notice The grid's tunable parameters, read by MetaScheduler on every use.
contract Constants is Ownable {
    /// @notice Smallest amount of credit-wei a job may lock.
    uint256 public minimumAmount = 100e18;
    /// @notice Minutes billed when a running job is cancelled (kept for clients; not applied by the rules).
    uint256 public cancellationFeeMinute = 5;
    /// @notice Minutes a provider may bill beyond the measured elapsed time before being clamped.
    uint256 public billDurationDeltaMinute = 15;
    /// @notice Minutes of credits added by one delegated top-up.
    uint64 public topUpSliceDurationMin = 30;
    /// @notice Percentage of each final cost kept by the grid.
    uint256 public deepsquareCut = 20;
    /// @notice Minutes a meta-scheduled job may wait for its provider's claim before it is recycled.
    uint64 public claimJobTimeout = 10;

    function setMinimumAmount(uint256 _minimumAmount) external onlyOwner {
        minimumAmount = _minimumAmount;
    }

    function setCancellationFeeMinute(uint256 _cancellationFeeMinute) external onlyOwner {
        cancellationFeeMinute = _cancellationFeeMinute;
    }

    function setBillDurationDeltaMinute(uint256 _billDurationDeltaMinute) external onlyOwner {
        billDurationDeltaMinute = _billDurationDeltaMinute;
    }

    /// @dev A zero slice would let delegated top-ups spin without adding time.
    function setTopUpSliceDurationMin(uint64 _topUpSliceDurationMin) external onlyOwner {
        if (_topUpSliceDurationMin == 0) revert OutOfBounds();
        topUpSliceDurationMin = _topUpSliceDurationMin;
    }

    /// @dev A cut above 100 % would take customers' refunds.
    function setDeepsquareCut(uint256 _deepsquareCut) external onlyOwner {
        if (_deepsquareCut > 100) revert OutOfBounds();
        deepsquareCut = _deepsquareCut;
    }

    function setClaimJobTimeout(uint64 _claimJobTimeout) external onlyOwner {
        claimJobTimeout = _claimJobTimeout;
    }
}
